"""Kernels: attention ops and the fp8 GEMM, each with a plain reference beside it."""
