"""Analysis: pure functions of `ModelConfig` (parameters, FLOPs, memory, roofline, hardware).

Every function returns numbers (dicts), never prints; conventions are in each module's
docstring; they import only `vishwamai.config` (and the measured CPU peak from
`vishwamai.measure`, since a CPU has no datasheet). The independent checks they are held to (the
real parameter tree, the compiler's `cost_analysis()` and `memory_analysis()`) build the model,
so they live above it, in `vishwamai.verify`. `seed` reproduces the seed notebook's formulas for
the errata.
"""
from vishwamai.analysis.flops import (attention_mlp_crossover, decode_flops,  # noqa: F401
                                      flops, flops_per_token, layer_flops, remat_extra_flops,
                                      shape_summary)
from vishwamai.analysis.hardware import (HARDWARE, Chip, detect_device, get_chip,  # noqa: F401
                                         measure_cpu_peak, peak_flops)
from vishwamai.analysis.memory import (activation_bytes, attention_scores_bytes,  # noqa: F401
                                       kv_cache_bytes, logits_bytes, memory, optimizer_bytes,
                                       saved_per_layer)
from vishwamai.analysis.network import Mesh  # noqa: F401
from vishwamai.analysis.params import COMPONENTS, count_params, param_bytes  # noqa: F401
from vishwamai.analysis.roofline import (hbm_traffic, min_chips, plan, roofline,  # noqa: F401
                                         step_roofline, tokens_per_second)
