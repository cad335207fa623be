"""Checks at the door: one error type for bad arguments, and the checks every entry point uses.

Every check raises `InputError` (a `ValueError`) whose message names the argument, the value
it got and what is accepted, e.g. ``seq_len=-5 is not accepted: expected an int >= 1``. A value
of the wrong type raises `InputTypeError`, which is both an `InputError` and a `TypeError`, so
`except ValueError`, `except TypeError` and `except InputError` all catch what they should.
Each check returns the value (converted to a plain Python int / float where it says so), so
callers can write `n = positive_int("n", n)`.

Arrays: `token_ids` checks concrete arrays on the host (one cheap min/max). Under `jax.jit`
the values are tracers and cannot be inspected without a device-to-host transfer, so the check
is skipped there; the model turns an out-of-range id into NaN instead (see
`vishwamai.layers.embeddings.Embed`), so a bad id under jit fails loudly rather than reading a
wrong row.

Imports only the standard library, numpy and jax: every tier of the package may use it.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Any, Callable, Iterable, Mapping

import numpy as np


class InputError(ValueError):
    """A bad argument; the message names it, the value given and the values accepted."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type (an `InputError` and a `TypeError`)."""


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def fail(name: str, value, accepted: str, *, type_error: bool = False):
    """Raises the error every check raises: `name=value is not accepted: expected accepted`."""
    cls = InputTypeError if type_error else InputError
    raise cls(f"{name}={_show(value)} is not accepted: expected {accepted}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _bounds(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


def _inside(v, lo, hi, lo_open, hi_open) -> bool:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    if hi is not None and (v >= hi if hi_open else v > hi):
        return False
    return True


# ------------------------------------------------------------------------------ scalars
def integer(name: str, value, *, lo: int | None = None, hi: int | None = None) -> int:
    """`value` as an int in [lo, hi] (either bound optional). Bools are not ints here."""
    accepted = " ".join(("an int", _bounds(lo, hi, False, False))).strip()
    if not _is_int(value):
        fail(name, value, accepted, type_error=True)
    if not _inside(value, lo, hi, False, False):
        fail(name, value, accepted)
    return int(value)


def positive_int(name: str, value) -> int:
    """An int >= 1."""
    return integer(name, value, lo=1)


def non_negative_int(name: str, value) -> int:
    """An int >= 0."""
    return integer(name, value, lo=0)


def in_range(name: str, value, lo: float | None = None, hi: float | None = None, *,
             lo_open: bool = False, hi_open: bool = False) -> float:
    """A finite real number between `lo` and `hi` (closed unless `lo_open` / `hi_open`)."""
    accepted = " ".join(("a finite number", _bounds(lo, hi, lo_open, hi_open))).strip()
    if not _is_real(value):
        fail(name, value, accepted, type_error=True)
    if not math.isfinite(value) or not _inside(value, lo, hi, lo_open, hi_open):
        fail(name, value, accepted)
    return float(value)


def number(name: str, value) -> float:
    """Any finite real number."""
    return in_range(name, value)


def positive(name: str, value) -> float:
    """A finite number > 0."""
    return in_range(name, value, 0, lo_open=True)


def non_negative(name: str, value) -> float:
    """A finite number >= 0."""
    return in_range(name, value, 0)


def fraction(name: str, value, *, closed: bool = False) -> float:
    """A number in [0, 1) ([0, 1] with `closed`)."""
    return in_range(name, value, 0, 1, hi_open=not closed)


def probability(name: str, value) -> float:
    """A number in (0, 1]."""
    return in_range(name, value, 0, 1, lo_open=True)


def boolean(name: str, value) -> bool:
    """True or False (not 0/1, not a string)."""
    if not isinstance(value, (bool, np.bool_)):
        fail(name, value, "True or False", type_error=True)
    return bool(value)


def one_of(name: str, value, choices: Iterable) -> Any:
    """`value` if it is one of `choices` (compared with ==)."""
    choices = tuple(choices)
    try:
        ok = value in choices
    except TypeError:  # an unhashable value against a set-like choices
        ok = False
    if not ok:
        fail(name, value, f"one of {list(choices)}")
    return value


def int_list(name: str, values, *, lo: int = 1) -> list[int]:
    """A non-empty list (or tuple) of ints >= `lo`."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
        fail(name, values, f"a non-empty list of ints >= {lo}", type_error=True)
    for i, v in enumerate(values):
        integer(f"{name}[{i}]", v, lo=lo)
    return [int(v) for v in values]


def text(name: str, value) -> str:
    """A non-empty str."""
    if not isinstance(value, str):
        fail(name, value, "a non-empty str", type_error=True)
    if not value:
        fail(name, value, "a non-empty str")
    return value


def each_of(choices: Iterable) -> Callable:
    """A check for a non-empty list (or tuple) whose every item is one of `choices`."""
    choices = tuple(choices)

    def checked(name, values):
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
            fail(name, values, f"a non-empty list of names from {list(choices)}", type_error=True)
        for i, v in enumerate(values):
            one_of(f"{name}[{i}]", v, choices)
        return list(values)
    return checked


def auto_or(check: Callable) -> Callable:
    """A check that also accepts the string 'auto' (a chapter parameter chosen by backend)."""
    def checked(name, value, *args, **kw):
        return value if value == "auto" else check(name, value, *args, **kw)
    checked.__name__ = f"auto_or_{getattr(check, '__name__', 'check')}"
    return checked


def optional(check: Callable) -> Callable:
    """A check that also accepts None: `optional(positive_int)("top_k", None)` -> None."""
    def checked(name, value, *args, **kw):
        return None if value is None else check(name, value, *args, **kw)
    checked.__name__ = f"optional_{getattr(check, '__name__', 'check')}"
    return checked


# ------------------------------------------------------------------------------ arrays
def _is_tracer(x) -> bool:
    import jax

    return isinstance(x, jax.core.Tracer)


def token_ids(name: str, ids, vocab_size: int, *, ignore_index: int | None = None):
    """Checks that an int array holds ids in [0, vocab_size) (or `ignore_index`); returns it.

    A concrete array is checked on the host (its min and max); a traced one (under `jax.jit`)
    only for its dtype, since its values are not known at trace time.
    """
    dtype = getattr(ids, "dtype", None)
    if dtype is None:
        ids = np.asarray(ids)
        dtype = ids.dtype
    if not np.issubdtype(np.dtype(dtype), np.integer):
        fail(name, f"<array of {dtype}>", "an integer array of token ids", type_error=True)
    if _is_tracer(ids) or getattr(ids, "size", 1) == 0:
        return ids
    host = np.asarray(ids)
    bad = (host < 0) | (host >= vocab_size)
    if ignore_index is not None:
        bad &= host != ignore_index
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        also = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise InputError(
            f"{name} holds token ids outside [0, vocab_size={vocab_size}){also}: "
            f"{int(host[where])} at index {list(where)} ({int(bad.sum())} bad of {host.size}; "
            f"min {int(host.min())}, max {int(host.max())})")
    return ids


def prng_key(name: str, key):
    """A JAX PRNG key: a typed key (`jax.random.key`) or raw key data (`jax.random.PRNGKey`, a
    uint32 array whose last axis holds the key's words). Returns it."""
    import jax

    dtype = getattr(key, "dtype", None)
    accepted = "a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed))"
    if dtype is None:
        fail(name, key, accepted, type_error=True)
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    if np.dtype(dtype) != np.uint32 or np.ndim(key) < 1:
        fail(name, key if np.ndim(key) == 0 else f"<array of {np.dtype(dtype)}{list(np.shape(key))}>",
             accepted, type_error=True)
    return key


def writable_file(name: str, path) -> str:
    """A file path whose directory exists and is writable (checked before any work is done)."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        fail(name, path, "a file path", type_error=True)
    path = os.fspath(path)
    if os.path.isdir(path):
        fail(name, path, "a file path, not a directory")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        fail(name, path, f"a path in an existing directory ({directory} does not exist)")
    import tempfile

    try:                      # a real write: os.access says yes to root on read-only mounts
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as e:
        fail(name, path, f"a path in a writable directory ({directory}: {e.strerror})")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        fail(name, path, "a writable file (it exists and is read-only)")
    return path


# ------------------------------------------------------------------------------ parameter sets
def check_params(values: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
    """Checks several named values at once (a chapter's parameters: `check_params(globals(),
    {...})`); returns None (so a notebook cell ending in it displays nothing).

    Each entry of `spec` maps a name to a check `f(name, value)` (any function of this module,
    or a lambda), or to a tuple / list / set of accepted values. A name missing from `values`
    raises `InputError` too.
    """
    for key, check in spec.items():
        if key not in values:
            raise InputError(f"parameter {key!r} is missing (expected by this check)")
        value = values[key]
        if callable(check):
            check(key, value)
        elif isinstance(check, (tuple, list, set, frozenset)):
            one_of(key, value, check)
        else:
            raise TypeError(f"check_params: spec[{key!r}] must be a check or a collection of "
                            f"accepted values; got {check!r}")


# ------------------------------------------------------------------------------ command line
def cli_type(check: Callable, convert: Callable = int, *, what: str = "") -> Callable:
    """An argparse `type=` function: converts the text, then runs `check` on it.

    `argparse` turns the `ArgumentTypeError` into `error: argument --x: ...` and exit status 2.
    """
    import argparse

    def parse(text: str):
        try:
            value = convert(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {what or 'a ' + getattr(convert, '__name__', 'value')}") from None
        try:
            return check("value", value)
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e).replace("value=", "", 1)) from None

    parse.__name__ = getattr(check, "__name__", "value")
    return parse
