"""Ahead-of-time compilation for NVIDIA GPUs: XLA:GPU's own numbers, on a CPU host.

With JAX's CUDA plugin installed (`pip install "vishwamai[aot-gpu]"`: `jax-cuda12-plugin` and
`jax-cuda12-pjrt` of the same version as jax, `nvidia-cuda-nvcc-cu12` for the PTX assembler,
`nvidia-cudnn-cu12` for cuDNN's attention), JAX describes GPUs that are not attached:
`jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=<text>,
topology="1x<servers>x<GPUs per server>")`, where the target config is a
`GpuTargetConfigProto` in text form in place of a device query. XLA ships these for its
supported GPUs; the package carries H100 (SXM), H200 and B200 (`vishwamai/data/gpu_targets`,
with their provenance). `jit(...).lower(abstract inputs).compile()` then runs XLA:GPU, PTX
generation included, and nothing executes.

What comes back, and what does not:
- `memory_analysis()` is the GPU program's: arguments, outputs, aliases, temporaries.
- The compiled HLO: collectives (NCCL), fusions, custom calls (`__cudnn$fmha...` for cuDNN
  attention, `__cublas$lt$matmul...` for cuBLASLt GEMMs).
- `cost_analysis()` is None for these programs: no FLOP count.
- No autotuning (there is no device to time on): GEMM and fusion tiles are XLA's defaults, and
  the GEMM backend a real GPU would pick can differ. cuDNN graphs are not built, so cuDNN's
  workspace is not in the temporaries.
- XLA:GPU has no out-of-memory verdict: it compiles a program larger than the GPU (its
  scheduler logs that the program exceeds its limit, 80% of device memory, and goes on). The
  verdict here is the rule JAX applies at run time: the program must fit the share of device
  memory JAX's GPU client takes by default (`XLA_PYTHON_CLIENT_MEM_FRACTION`, 0.75). A program
  above it is an 'oom' row.

The CUDA plugin must not start its (absent) GPU: JAX must run with `JAX_PLATFORMS=cpu` (or a
list with 'cpu' and without 'cuda'). Importing this module on a host without an NVIDIA GPU sets
that when JAX has not started yet and nothing was set; otherwise `require_cuda_plugin` says what
to set. The plugin's C++ start-up messages ("Could not find cuda drivers") are kept off the
terminal while topologies are made and programs compiled (`compiler_messages` in a row holds
what the compiler logged).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.resources
import importlib.util
import os
import tempfile
import time

import jax

from vishwamai import aot as _aot
from vishwamai import sharding as _sh
from vishwamai import validate
from vishwamai.kernels.target import compile_target
from vishwamai.measure import CompiledStats, custom_calls

#: Target name -> (spec file in vishwamai/data/gpu_targets, `analysis.hardware` key).
TARGETS = {"h100": ("h100_sxm.txtpb", "h100"), "h200": ("h200.txtpb", "h200"),
           "b200": ("b200.txtpb", "b200")}
#: The share of device memory JAX's GPU client preallocates for XLA (its default
#: `XLA_PYTHON_CLIENT_MEM_FRACTION`): the bytes a program may use at run time.
MEM_FRACTION = 0.75
MAX_GPUS_PER_SERVER = 8       # an HGX/DGX server: 8 GPUs on one NVSwitch
MODES = _aot.MODES
LAYOUTS = _aot.LAYOUTS
#: XLA:GPU options for every compilation here: none beyond XLA's defaults for the model grid.
DEFAULT_OPTIONS: dict = {}
#: Triton GEMMs off: XLA then lowers dots to cuBLAS(Lt) calls, the scaled fp8 dot to
#: `__cublas$lt$matmul$f8` (with Triton on, an fp8 dot stays a Triton fusion with f8 operands).
CUBLAS_OPTIONS = {"xla_gpu_enable_triton_gemm": False}
_NOISE = ("cudart_stub.cc", "absl::InitializeLog", "Logging before InitGoogle")


class CudaPluginMissingError(ImportError):
    """JAX's CUDA plugin (the XLA:GPU compiler) is not installed here, or JAX was started in a
    way that keeps it from compiling (the message says which)."""


# ============================================================================================
# environment
# ============================================================================================

def _nvidia_gpu_attached() -> bool:
    """Whether an NVIDIA device (PCI vendor 0x10de) sits on this host's bus."""
    root = "/sys/bus/pci/devices"
    try:
        names = os.listdir(root)
    except OSError:
        return False
    for dev in names:
        try:
            with open(os.path.join(root, dev, "vendor")) as f:
                if f.read().strip() == "0x10de":
                    return True
        except OSError:
            continue
    return False


def _default_to_cpu() -> None:
    """`jax_platforms='cpu'` (plus 'tpu' on a TPU VM) where no NVIDIA GPU is attached, JAX has
    not started a backend and nothing was chosen: the CUDA plugin's start-up would fail (and
    print a traceback), after which JAX refuses CUDA topologies."""
    from jax._src import xla_bridge
    if (jax.config.jax_platforms or _nvidia_gpu_attached()
            or xla_bridge.backends_are_initialized()):
        return
    jax.config.update("jax_platforms", "tpu,cpu" if _aot._tpu_chips_attached() else "cpu")


_default_to_cpu()


def _platforms() -> str | None:
    return jax.config.jax_platforms


def have_cuda_plugin() -> bool:
    """True when JAX's CUDA plugin is installed."""
    return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None


def versions() -> dict:
    """Versions of jax and of the GPU compiler's wheels (None where not installed)."""
    from importlib.metadata import PackageNotFoundError, version
    out = {"jax": jax.__version__}
    for name in ("jax-cuda12-plugin", "jax-cuda12-pjrt", "nvidia-cuda-nvcc-cu12",
                 "nvidia-cudnn-cu12"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def require_cuda_plugin() -> None:
    """Raises `CudaPluginMissingError` with the install command when the plugin is missing, or
    with the setting to change when JAX runs with a platform list that starts CUDA here."""
    if not have_cuda_plugin():
        raise CudaPluginMissingError(
            "compiling for a GPU target needs JAX's CUDA plugin, which is not installed; "
            f'install it with: pip install "jax-cuda12-plugin=={jax.__version__}" '
            f'"jax-cuda12-pjrt=={jax.__version__}" nvidia-cuda-nvcc-cu12 nvidia-cudnn-cu12 '
            '(or pip install "vishwamai[aot-gpu]")')
    platforms = [p.strip() for p in (_platforms() or "").split(",") if p.strip()]
    if not _nvidia_gpu_attached() and ("cpu" not in platforms or {"cuda", "gpu"} & set(platforms)):
        raise CudaPluginMissingError(
            "compiling for a GPU that is not attached needs JAX to run without starting CUDA: "
            f"JAX_PLATFORMS is {_platforms()!r}; set JAX_PLATFORMS=cpu before JAX starts")


@contextlib.contextmanager
def _captured_stderr(sink: list):
    """Runs the block with file descriptor 2 sent to a temporary file; the lines it got that
    are not the CUDA plugin's start-up noise are appended to `sink`."""
    import sys
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield sink
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            sink.extend(ln for ln in text.splitlines()
                        if ln.strip() and not any(n in ln for n in _NOISE))


# ============================================================================================
# targets and topologies
# ============================================================================================

def shipped_targets() -> tuple:
    """The GPU targets the package carries a description of."""
    return tuple(TARGETS)


def _check_target(target) -> str:
    if target not in TARGETS:
        raise validate.InputError(
            f"target={target!r} is not a shipped GPU target; accepted: {shipped_targets()}")
    return target


@functools.lru_cache(maxsize=None)
def target_config(target: str) -> str:
    """The `GpuTargetConfigProto` text of a shipped target (see vishwamai/data/gpu_targets)."""
    name = TARGETS[_check_target(target)][0]
    return (importlib.resources.files("vishwamai") / "data" / "gpu_targets" / name).read_text()


@functools.lru_cache(maxsize=None)
def device_memory_bytes(target: str) -> int:
    """`device_memory_size` of the target's description (the GPU's memory, in bytes)."""
    for line in target_config(target).splitlines():
        if line.strip().startswith("device_memory_size:"):
            return int(line.split(":")[1])
    raise RuntimeError(f"the {target} description has no device_memory_size")


def usable_bytes(target: str) -> float:
    """What a program may use on one GPU of `target` (`MEM_FRACTION` of its memory)."""
    return MEM_FRACTION * device_memory_bytes(target)


def _check_count(name, value, top=None):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (
            top is not None and value > top):
        raise validate.InputError(
            f"{name} must be an int from 1{f' to {top}' if top else ' up'}; got {value!r}")


def topology_name(gpus_per_server: int = 8, servers: int = 1) -> str:
    """XLA's GPU topology string: `'<partitions>x<hosts per partition>x<devices per host>'`."""
    _check_count("gpus_per_server", gpus_per_server, MAX_GPUS_PER_SERVER)
    _check_count("servers", servers)
    return f"1x{servers}x{gpus_per_server}"


@functools.lru_cache(maxsize=None)
def gpu_devices(target: str, gpus_per_server: int = 8, servers: int = 1) -> tuple:
    """The compile-only devices of `servers` servers of `gpus_per_server` GPUs of `target`."""
    _check_target(target)
    topology = topology_name(gpus_per_server, servers)
    require_cuda_plugin()
    from jax.experimental import topologies
    log: list = []
    with _captured_stderr(log):
        desc = topologies.get_topology_desc(platform="cuda", target_config=target_config(target),
                                            topology=topology)
    return tuple(desc.devices)


def gpu_mesh(target: str, layout: str, gpus_per_server: int = 8, servers: int = 1):
    """The `('data', 'fsdp', 'tensor')` mesh of a named layout over all the GPUs."""
    devices = gpu_devices(target, gpus_per_server, servers)
    return _sh.make_mesh(**_sh.layout_shape(layout, len(devices)), devices=list(devices))


def compile_for_gpus(fn, args, *, options: dict | None = None, log: list | None = None):
    """`fn.lower(*args).compile()` for GPU devices, kernels traced for a GPU, with the plugin's
    stderr captured into `log`."""
    sink = [] if log is None else log
    with compile_target("gpu"), _captured_stderr(sink):
        return fn.lower(*args).compile(compiler_options=options or None)


def cudnn_attention_calls(custom_calls: dict) -> dict:
    """The cuDNN fused-attention custom calls among a program's (`{target: count}`)."""
    return {k: v for k, v in custom_calls.items() if k.startswith("__cudnn$fmha")}


# ============================================================================================
# one row
# ============================================================================================

def compile_for_target(config, target: str, *, layout: str, mode: str, batch_size: int,
                       seq_len: int, gpus_per_server: int = 8, servers: int = 1,
                       attention_impl: str | None = None, remat: str | None = None,
                       cache_len: int | None = None, dtype: str | None = None,
                       param_dtype: str | None = None, scan_layers: bool | None = True,
                       num_layers: int | None = None, options: dict | None = None,
                       hlo: bool = False) -> dict:
    """Compiles one program for GPUs of `target` with XLA:GPU: the row `aot.compile_for_topology`
    gives for a TPU slice.

    Args:
      config, layout, mode, batch_size, seq_len, attention_impl, remat, cache_len, dtype,
        param_dtype, scan_layers, num_layers: as `vishwamai.aot.compile_for_topology`.
      target: one of `TARGETS` ('h100', 'h200', 'b200').
      gpus_per_server: 1 to 8; servers: 1 or more (all GPUs in one mesh).
      options: XLA:GPU options (default `DEFAULT_OPTIONS`).
      hlo: also return the compiled HLO text under 'hlo'.

    Returns:
      One row: preset, topology ('h100:1x1x8'), generation (the target), chips, servers,
      gpus_per_server, layout, mode, sizes, dtypes, attention_impl, remat, status ('ok', or
      'oom' when the peak exceeds `usable_bytes`), peak_bytes_per_chip and its parts,
      resident_bytes_per_chip, hbm_bytes_per_chip (the description's device memory),
      compiler_hbm_bytes_per_chip (`usable_bytes`), flops_per_chip (NaN: no cost analysis),
      collectives, fusions, custom_calls, cudnn_attention, compiler_messages, compile_s,
      versions; for 'oom' also needed_bytes and needed_for.

    Raises:
      CudaPluginMissingError: the plugin is not installed (or cannot start, see
        `require_cuda_plugin`).
      InputError / ValueError: a bad target, server shape, layout, mode or size.
    """
    _check_target(target)
    topology = topology_name(gpus_per_server, servers)
    if layout not in LAYOUTS:
        raise validate.InputError(f"layout={layout!r} is not one of {LAYOUTS}")
    if mode not in MODES:
        raise validate.InputError(f"mode={mode!r} is not one of {MODES}")
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
        _check_count(name, v)
    require_cuda_plugin()
    cfg = _aot.model_config(config, attention_impl=attention_impl, remat=remat, dtype=dtype,
                            param_dtype=param_dtype, scan_layers=scan_layers,
                            num_layers=num_layers)
    cache_len = (cache_len or seq_len) if mode == "decode" else None
    cfg.check_seq_len(cache_len if mode == "decode" else seq_len)
    from vishwamai.model import VishwamAI
    model = VishwamAI(cfg)
    mesh = gpu_mesh(target, layout, gpus_per_server, servers)
    chips = gpus_per_server * servers
    row = {"preset": cfg.name, "topology": f"{target}:{topology}", "generation": target,
           "chips": chips, "servers": servers, "gpus_per_server": gpus_per_server,
           "layout": layout, "mode": mode, "batch_size": batch_size, "seq_len": seq_len,
           "cache_len": cache_len, "dtype": cfg.dtype, "param_dtype": cfg.param_dtype,
           "attention_impl": cfg.attention_impl, "remat": cfg.remat,
           "scan_layers": cfg.scan_layers, "num_layers": cfg.num_layers,
           "hbm_bytes_per_chip": float(device_memory_bytes(target)),
           "compiler_hbm_bytes_per_chip": usable_bytes(target),
           "options": dict(DEFAULT_OPTIONS if options is None else options),
           "versions": versions(), "jax_version": jax.__version__}
    lower = {"train": _aot._lower_train, "forward": _aot._lower_forward,
             "decode": _aot._lower_decode}[mode]
    t0 = time.perf_counter()
    fn, args, resident = lower(model, mesh, batch_size, cache_len if mode == "decode" else seq_len)
    row["resident_bytes_per_chip"] = resident
    log: list = []
    with _sh.mesh_context(mesh):
        compiled = compile_for_gpus(fn, args, options=row["options"], log=log)
    row["compile_s"] = time.perf_counter() - t0
    stats = CompiledStats.of(compiled, hlo=True)
    text = compiled.as_text() or ""
    calls = custom_calls(text)
    row.update(peak_bytes_per_chip=stats.peak_bytes, argument_bytes=stats.argument_bytes,
               output_bytes=stats.output_bytes, alias_bytes=stats.alias_bytes,
               temp_bytes=stats.temp_bytes, flops_per_chip=stats.flops,
               bytes_accessed_per_chip=stats.bytes_accessed,
               collectives={k: v for k, v in stats.collectives.items() if v["count"]},
               fusions=_aot._fusions(text), custom_calls=calls,
               cudnn_attention=cudnn_attention_calls(calls), compiler_messages=log[:20])
    fits = stats.peak_bytes <= row["compiler_hbm_bytes_per_chip"]
    row["status"] = "ok" if fits else "oom"
    if not fits:
        row.update(needed_bytes=stats.peak_bytes, needed_for="the program's peak",
                   oom_message=(f"peak {stats.peak_bytes / 2 ** 30:.2f} GiB per GPU exceeds "
                                f"{MEM_FRACTION:.0%} of {target}'s "
                                f"{device_memory_bytes(target) / 2 ** 30:.2f} GiB"))
    if hlo:
        row["hlo"] = text
    return row


def analytic_point(row: dict, config=None) -> dict:
    """The package's memory model for the same point as a GPU row (no lane padding), and its
    verdict against the same usable bytes (`usable_bytes`)."""
    from vishwamai.analysis.roofline import memory_per_chip
    cfg = _aot.model_config(config if config is not None else row["preset"],
                            attention_impl=row.get("attention_impl"), remat=row.get("remat"),
                            dtype=row.get("dtype"), param_dtype=row.get("param_dtype"),
                            num_layers=row.get("num_layers"), scan_layers=row.get("scan_layers"))
    est = memory_per_chip(cfg, row["layout"], row["chips"], batch=row["batch_size"],
                          seq_len=row["seq_len"], mode=row["mode"],
                          cache_len=row.get("cache_len"), lanes=1)
    hbm = row["compiler_hbm_bytes_per_chip"]
    return {"analytic_peak_bytes_per_chip": est["total"], "analytic_fits": est["total"] <= hbm,
            "analytic_parts": {k: v for k, v in est.items() if k != "total"}}


__all__ = ["TARGETS", "MEM_FRACTION", "CudaPluginMissingError", "have_cuda_plugin",
           "require_cuda_plugin", "shipped_targets", "target_config", "device_memory_bytes",
           "usable_bytes", "topology_name", "gpu_devices", "gpu_mesh", "compile_for_gpus",
           "compile_for_target", "cudnn_attention_calls", "analytic_point", "versions"]
