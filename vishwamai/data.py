"""Byte-level text for training runs that need no network: the Python standard library's sources.

Every Python installation ships its standard library as `.py` files; concatenated in sorted
order they are a few megabytes of real, deterministic text. Bytes are the tokens (ids 0..255),
which is what the `tiny` preset's vocabulary of 256 is for; larger vocabularies simply use the
first 256 ids.
"""
from __future__ import annotations

import functools
import os
import sysconfig
from typing import Iterator

import numpy as np


def stdlib_dir() -> str:
    """The directory holding this interpreter's standard library sources."""
    return sysconfig.get_paths()["stdlib"]


@functools.lru_cache(maxsize=8)
def stdlib_bytes(max_bytes: int = 4_000_000, *, root: str | None = None) -> bytes:
    """Up to `max_bytes` of the standard library's top-level `*.py` files, sorted by name.

    Only the top level of the library directory is read (no `site-packages`, no tests), so the
    text is the same for a given Python version wherever it is installed. Files are separated
    by a NUL byte.

    Raises:
      ValueError: `max_bytes` < 1, or no sources found under `root`.
    """
    if not (isinstance(max_bytes, int) and max_bytes >= 1):
        raise ValueError(f"max_bytes must be an int >= 1; got {max_bytes!r}")
    root = root or stdlib_dir()
    names = sorted(n for n in os.listdir(root) if n.endswith(".py"))
    if not names:
        raise ValueError(f"no .py files in {root!r}")
    out, size = [], 0
    for n in names:
        with open(os.path.join(root, n), "rb") as f:
            b = f.read()
        out.append(b + b"\0")
        size += len(b) + 1
        if size >= max_bytes:
            break
    return b"".join(out)[:max_bytes]


def byte_tokens(max_bytes: int = 4_000_000) -> np.ndarray:
    """The standard-library text as a `uint8` token array (one token per byte)."""
    return np.frombuffer(stdlib_bytes(max_bytes), dtype=np.uint8)


def train_val_split(tokens: np.ndarray, val_fraction: float = 0.05):
    """Splits a token stream into a leading training part and a trailing validation part."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction!r}")
    cut = int(len(tokens) * (1.0 - val_fraction))
    return tokens[:cut], tokens[cut:]


def random_windows(tokens: np.ndarray, batch_size: int, seq_len: int, *,
                   seed: int = 0) -> Iterator[np.ndarray]:
    """Endless batches of `[batch_size, seq_len + 1]` int32 windows at random offsets.

    Each row holds `seq_len` inputs plus the one extra token the last input predicts, which is
    the layout `vishwamai.train.make_train_step` expects.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1; got {batch_size}, {seq_len}")
    n = len(tokens) - seq_len - 1
    if n < 1:
        raise ValueError(f"{len(tokens)} tokens cannot fill one window of {seq_len + 1}")
    rng = np.random.default_rng(seed)
    idx = np.arange(seq_len + 1)
    while True:
        starts = rng.integers(0, n, size=batch_size)
        yield tokens[starts[:, None] + idx[None, :]].astype(np.int32)


def decode(ids) -> str:
    """Byte ids back to text (invalid UTF-8 replaced)."""
    return bytes(int(i) & 0xFF for i in np.asarray(ids).ravel()).decode("utf-8", errors="replace")
