"""Numbers for the book's prose: formatted in one place, glued into the markdown by MyST-NB.

A chapter states a measured or computed number by gluing it from the cell that computed it::

    from vishwamai import prose
    prose.glue("kv_bytes", kv_bytes, prose.count)     # markdown: {glue:text}`kv_bytes`

The value is formatted here (thousands separators, fixed decimals, percentages, ranges), so every
chapter writes numbers the same way, and glued as text. Where MyST-NB is not installed (a chapter
run on Colab) `glue` only returns the text; the cell's own output still shows the number.
`tests/test_prose_numbers.py` fails on a digit in the markdown that does not come from here.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

try:  # the book build: MyST-NB stores the value in the cell's outputs for {glue:text}
    from myst_nb import glue as _myst_glue
except ImportError:  # pragma: no cover - Colab, plain Jupyter
    _myst_glue = None

#: How the prose names a dtype.
DTYPE_NAMES = {"bfloat16": "bf16", "float32": "f32", "float16": "f16", "float8_e4m3fn": "fp8 (e4m3)",
               "float8_e5m2": "fp8 (e5m2)", "int8": "int8"}

#: Every value glued by this process, name -> text (what the markdown will show).
GLUED: dict[str, str] = {}


def count(x: Any) -> str:
    """An integer with thousands separators: 1,048,576."""
    return f"{int(round(float(x))):,}"


def num(x: Any, digits: int = 2) -> str:
    """A float with `digits` decimals and thousands separators: 3.12, 6,144.0."""
    return f"{float(x):,.{digits}f}"


def sig(x: Any, digits: int = 3) -> str:
    """`digits` significant figures, thousands separators for large values: 0.0342, 1,920."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return f"{x:,.{decimals}f}"


def pct(x: Any, digits: int = 0) -> str:
    """A fraction as a percentage: 0.147 -> 14.7% (digits=1)."""
    return f"{100 * float(x):.{digits}f}%"


def times(x: Any, digits: int = 1) -> str:
    """A ratio: 3.1× (digits=1)."""
    return f"{float(x):,.{digits}f}×"


def span(lo: Any, hi: Any, fmt: Callable[[Any], str] = num) -> str:
    """A range with an en dash, both ends in the same format: 3.12–3.84, 3.9%–14.7%."""
    a, b = fmt(lo), fmt(hi)
    return a if a == b else f"{a}–{b}"


def gib(nbytes: Any, digits: int = 1) -> str:
    """Bytes in GiB (2**30): 15.2 GiB."""
    return f"{float(nbytes) / 2**30:,.{digits}f} GiB"


def short(x: Any, digits: int = 1) -> str:
    """A large count with a suffix, as model sizes are written: 110M, 1.5B, 768M."""
    x = float(x)
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            text = f"{x / div:.{digits}f}"
            if "." in text:  # 1.50 -> 1.5, 2.0 -> 2; never 110 -> 11
                text = text.rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return f"{x:g}"


def spec(format_spec: str) -> Callable[[Any], str]:
    """A formatter from a format spec, for a one-off layout: spec(",.1f")(1234.5) == "1,234.5"."""
    return lambda x: format(float(x), format_spec)


def kib_count(n: Any) -> str:
    """A power-of-two token count in binary thousands, as contexts are named: 32768 -> 32k."""
    n = int(n)
    return f"{n // 1024}k" if n % 1024 == 0 and n >= 1024 else f"{n:,}"


def glue(name: str, value: Any, fmt: Callable[[Any], str] | None = None) -> None:
    """Formats `value` (with `fmt`, or as given if it is a string) and glues it as `name`.

    The markdown refers to it as ``{glue:text}`name` ``; the text is final, so the role needs no
    format spec. Returns None (a cell that ends with it prints nothing); `GLUED[name]` holds the
    text.
    """
    if fmt is not None:
        text = fmt(value)
    elif isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = str(value)
    elif isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real)
                                                  and float(value).is_integer()):
        text = count(value)
    else:
        raise TypeError(f"glue({name!r}, {value!r}): pass fmt= for a {type(value).__name__} "
                        f"(one of count, num, sig, pct, times, span, gib), or a string")
    GLUED[name] = text
    if _myst_glue is not None:
        _myst_glue(name, text, display=False)


def claim(name: str, holds: bool, text: str, otherwise: str | None = None) -> None:
    """Glues a comparison the prose makes, computed from the data.

    With `otherwise=None` the claim must hold (an AssertionError names it if not), so a chapter
    cannot state it for a parameter set where it is false. With `otherwise` the prose takes
    whichever wording is true for the numbers this run measured.
    """
    if otherwise is None:
        assert holds, f"the prose claims {text!r} ({name}), which these numbers do not support"
    glue(name, text if holds else otherwise)
