"""VishwamAI: a family of decoder-only transformer language models in JAX/Flax.

Importing the package runs `vishwamai.startup.select_platform`: on a host without a TPU or GPU
it selects JAX's CPU backend (unless `JAX_PLATFORMS` says otherwise) and keeps the start-up probe
errors of the accelerator plugins installed for ahead-of-time compilation out of stderr.
"""
from vishwamai import startup as _startup

_startup.select_platform()
__version__ = "0.1.0"
# What the book's chapters check after installing (with the version): that this is the package
# the book was written against, not another distribution of the same name.
BOOK_API = "vishwamai-book/1"
