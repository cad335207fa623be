"""Analysis: pure functions of `ModelConfig` (parameters, FLOPs, memory, roofline, hardware).

Every function returns numbers (dicts), never prints; conventions are in each docstring and the
results are cross-checked against the real parameter tree and the compiler in the tests.
"""
from vishwamai.analysis.hardware import (HARDWARE, Chip, detect_device, get_chip,  # noqa: F401
                                         measure_cpu_peak, peak_flops)
