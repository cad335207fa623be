"""`TPUProfiler`: a thin, device-agnostic profiler whose every number is measured.

The seed's name is kept; nothing here is TPU specific. A *region* is a `with` block:

    profiler = TPUProfiler({'log_dir': 'tpu_profiles'})
    fwd = profiler.wrap(jax.jit(model.apply))          # optional: FLOPs from the compiler
    with profiler.profile_region('forward') as region:
        logits = fwd(variables, x)
    profiler.get_metrics_summary()

On entry a region waits for work dispatched before it; on exit it waits for the work dispatched
inside it (outputs registered with `region.register`, every output of a wrapped function, and
else every live JAX array, then `jax.effects_barrier()`), so asynchronous dispatch is never
mistaken for speed. FLOPs and bytes of a region come from the compiled executables it ran
(`cost_analysis()`, via `wrap` or `region.run`) or from the caller (`flops=`, e.g. the analysis
library's model FLOPs). With a `log_dir`, regions are also recorded as `jax.profiler` traces
(TensorBoard / XProf / Perfetto read them) and the device busy time is read back from the trace.

`get_metrics_summary()` documents each metric in its 'definitions' entry. A metric that cannot
be known on this platform is NaN, with the reason in 'reasons'. No number is a constant.
"""
from vishwamai.profiler.regions import (  # noqa: F401
    DEFINITIONS, Region, _Call, _Tracked, _block_all, _host_memory, _memory_efficiency,
    _region_summary, _utilization)
from vishwamai.profiler.core import TPUProfiler  # noqa: F401
