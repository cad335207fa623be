"""VishwamAI: a family of decoder-only transformer language models in JAX/Flax."""
__version__ = "0.1.0"
