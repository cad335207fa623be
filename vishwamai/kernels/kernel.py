"""The design notebook's import path for the fp8 GEMM, kept so its code runs unchanged:

    from vishwamai.kernels.kernel import fp8_gemm_optimized

The implementation and its documentation live in `vishwamai.kernels.fp8`; this module only
re-exports its public names.
"""
from vishwamai.kernels.fp8 import (FP8_E4M3, FP8_E5M2, SCALINGS, dequantize_fp8,  # noqa: F401
                                   expand_scale, fp8_gemm_optimized, pow2_scale, quantize_fp8,
                                   quantized_nbytes, reference_gemm, relative_error,
                                   scaled_fp8_matmul)
