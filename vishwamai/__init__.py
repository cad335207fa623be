"""VishwamAI: a family of decoder-only transformer language models in JAX/Flax."""
__version__ = "0.1.0"
# What the book's chapters check after installing (with the version): that this is the package
# the book was written against, not another distribution of the same name.
BOOK_API = "vishwamai-book/1"
