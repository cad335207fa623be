"""How many XLA compilations a piece of code triggers, from JAX's own monitoring events."""
from __future__ import annotations

import contextlib

import jax

#: Recorded once per backend compilation (a jit cache miss that reaches XLA).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
    """Context manager yielding a dict whose 'count' is the backend compilations inside it.

    Example:
      with count_compiles() as c:
          f(x)
      c['count']  # 1 the first time f sees this shape, 0 afterwards
    """
    counter = {"count": 0, "seconds": 0.0}

    def listener(event, duration, **_):
        if event == COMPILE_EVENT:
            counter["count"] += 1
            counter["seconds"] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
