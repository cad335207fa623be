"""Ahead-of-time compilation for TPU topologies: the TPU compiler's own numbers, on any host.

With `libtpu` installed (`pip install "jax[tpu]==<jax version>"`), JAX describes a TPU slice
that is not attached (`jax.experimental.topologies.get_topology_desc`): its devices can carry
shardings, and `jit(...).lower(abstract inputs).compile()` runs the real XLA:TPU compiler for
them. Nothing executes. What comes back is what a TPU would be given: per-chip memory
(`memory_analysis()`), FLOPs and bytes (`cost_analysis()`), the compiled HLO (collectives,
fusions, custom kernels) and, for a program that does not fit, the compiler's out-of-memory
verdict with the bytes it needed. `compile_for_topology` turns one such compilation into one
result row; an out-of-memory verdict is a row, not an exception.

Topology names are `'<generation>:<chips per axis>'`: `v5e:2x2`, `v6e:8x8` (two axes) and
`v4:2x2x1`, `v5p:4x4x4` (three axes), as in Cloud TPU's `--topology`. Generation strings follow
the `HARDWARE` table of `vishwamai.analysis.hardware`.

On a host without TPU chips, libtpu's start-up still looks for a TPU VM's environment and, when
it finds none, prints warnings to stderr; and it takes a lock file (`/tmp/libtpu_lockfile`) that
makes a second process loading it fail. Importing this module on such a host (no TPU on the PCI
bus) sets, only where unset: `TPU_WORKER_HOSTNAMES=localhost` and `TPU_HOST_BOUNDS=1,1,1` (one
local host, which is what the machine is) and `ALLOW_MULTIPLE_LIBTPU_LOAD=1` (several compiling
processes may load libtpu at once). JAX's default backend is not changed: without chips the TPU
backend cannot start either way, and on a TPU VM nothing is set.
"""
from vishwamai.aot.topology import (  # noqa: F401
    GENERATIONS, HOST_SLICE, LAYOUTS, MODES, TOPOLOGY_FORM, _GIB, _OOM_PATTERNS, _TOPOLOGY_RE,
    _UNITS, LibtpuMissingError, _is_oom, _one_chip, _quiet_libtpu_env, _tpu_chips_attached,
    compiler_hbm_bytes, have_libtpu, libtpu_version, parse_oom, parse_topology, require_libtpu,
    topology_devices, topology_mesh)
from vishwamai.aot.compile import (  # noqa: F401
    _DEF_RE, _DOT_RE, TPU_LANES, _abstract, _cache_sharding, _custom_calls, _fusions,
    _local_bytes, _lower_decode, _lower_forward, _lower_train, _splash_in, analytic_point,
    compile_for_topology, compile_on_one_chip, fp8_gemm_on_tpu, matmul_operand_types,
    model_config)
