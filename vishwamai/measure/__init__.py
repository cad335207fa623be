"""Measuring, at the bottom of the package (it imports only jax and numpy).

- `compiled`: `CompiledStats`, the one reader of a compiled executable's `cost_analysis()`,
  `memory_analysis()` and HLO collectives;
- `hlo`, `hlo_cost`: the compiled HLO as a call graph (`while` trip counts read) and its
  whole-step FLOPs, bytes, collectives and estimated cycles;
- `timing`: warm-up, blocking, median and spread; the CPU's matmul peak and memory bandwidth;
- `trace`: device busy time from a `jax.profiler` trace;
- `compiles`: how many XLA compilations a block of code triggers;
- `custom_calls`: the vendor kernels (cuDNN attention, cuBLAS GEMMs) in a compiled GPU program.
"""
from vishwamai.measure.compiles import COMPILE_EVENT, count_compiles  # noqa: F401
from vishwamai.measure.custom_calls import (cublas_gemms, cudnn_attention,  # noqa: F401
                                            custom_calls)
from vishwamai.measure.hlo_cost import step_figures  # noqa: F401
from vishwamai.measure.compiled import (COLLECTIVE_KINDS, CompiledStats,  # noqa: F401
                                        collectives, compiled_flops, compiled_memory,
                                        cost_analysis)
from vishwamai.measure.timing import (block, compile_time, env_info, higher_peak,  # noqa: F401
                                      is_oom, matmul_peak, matvec_bandwidth, memory_bandwidth, spread,
                                      time_fn)
from vishwamai.measure.trace import busy_fractions, union_length  # noqa: F401
