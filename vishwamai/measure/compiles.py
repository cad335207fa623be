"""How many XLA compilations a piece of code triggers, from JAX's own monitoring events."""
from __future__ import annotations

import jax

#: Recorded once per backend compilation (a jit cache miss that reaches XLA).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class count_compiles:  # noqa: N801 (used like a function: `with count_compiles() as c`)
    """Context manager yielding a dict whose 'count' is the backend compilations inside it
    (and 'seconds' their total duration).

    Example:
      with count_compiles() as c:
          f(x)
      c['count']  # 1 the first time f sees this shape, 0 afterwards
    """

    def __init__(self):
        self.counter = {"count": 0, "seconds": 0.0}
        self.active = False

    def _listener(self, event, duration, **_):
        if self.active and event == COMPILE_EVENT:
            self.counter["count"] += 1
            self.counter["seconds"] += duration

    def __enter__(self) -> dict:
        self.active = True
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self.counter

    def __exit__(self, *exc):
        self.active = False  # older jax (Colab's 0.7) has no public unregister: go quiet
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is not None:
            unregister(self._listener)
        return False
