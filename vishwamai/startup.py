"""What importing the package does before JAX starts: pick the CPU where there is nothing else,
and keep the accelerator plugins' start-up probes out of stderr.

The environment holds plugins for ahead-of-time compilation (libtpu for TPU slices, the CUDA
plugin for GPUs) that a CPU-only host cannot run. Left alone, JAX would load them at import and
probe for their hardware at its first computation, and each probe prints errors to stderr
(libtpu: "Failed to find host bounds for accelerator type", "unexpected worker hostname";
CUDA: "Could not find cuda drivers", "cuInit(0) failed", "Unable to load CUDA"). So, on a host
with no accelerator device node (`/dev/accel*`, `/dev/vfio`: TPU; `/dev/nvidia*`: NVIDIA GPU;
`/dev/kfd`: AMD GPU), `select_platform` (run by `import vishwamai`) sets `JAX_PLATFORMS=cpu`
and JAX's `jax_platforms` option, unless the user chose (`JAX_PLATFORMS` set, or `jax_platforms`
updated before this import), and imports JAX and discovers its plugins with those known probe
lines filtered out of stderr (every other line passes). Where a device node exists or a JAX
backend is already running, nothing happens at all: JAX picks the platform itself. Ahead-of-time
compiles for TPU or GPU work either way (they need the plugins, not the devices).
"""
from __future__ import annotations

import contextlib
import glob
import os
import sys
import tempfile

#: Device nodes that mean an accelerator JAX could use is attached.
DEVICE_NODES = ("/dev/accel*", "/dev/vfio", "/dev/nvidia*", "/dev/kfd")

#: Substrings of the stderr lines the plugins print when their hardware is absent.
PROBE_NOISE = (
    "cudart_stub.cc", "Could not find cuda drivers", "cuInit(0) failed", "failed call to cuInit",
    "Unable to load CUDA", "cuda_diagnostics", "cuda_executor", "cuda_platform",
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "Logging before InitGoogle() is written to STDERR",
    "Failed to find host bounds for accelerator type", "TPU_WORKER_HOSTNAMES",
    "libtpu_init_utils", "=== Source Location Trace: ===",
)


def accelerator_present() -> bool:
    """Whether a TPU or GPU device node exists on this host."""
    return any(glob.glob(pattern) for pattern in DEVICE_NODES)


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):   # a JAX without this function: assume they have
        return True


def _user_chose() -> bool:
    """Whether `JAX_PLATFORMS` (or JAX's `jax_platforms` option) names the platforms."""
    if os.environ.get("JAX_PLATFORMS"):
        return True
    if "jax" in sys.modules:
        import jax
        return bool(jax.config.jax_platforms)
    return False


@contextlib.contextmanager
def filtered_stderr(noise=PROBE_NOISE):
    """Runs the block with file descriptor 2 captured; afterwards writes back every captured line
    that contains none of `noise`. C libraries' messages go through the descriptor, which is
    why `sys.stderr` alone cannot be redirected."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):   # no descriptor 2 (an embedded interpreter)
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not any(n in line for n in noise))
            if kept:
                os.write(2, kept.encode())


def select_platform() -> str | None:
    """On a host without accelerators: selects the CPU for JAX unless someone chose, and imports
    JAX and its plugins with their probe lines filtered. Returns 'cpu' where it selected it,
    else None; with an accelerator attached or a backend already running it does nothing."""
    if accelerator_present() or _backends_started():
        return None
    chose = _user_chose()
    if not chose:
        os.environ["JAX_PLATFORMS"] = "cpu"
    with filtered_stderr():
        import jax
        if not chose:
            jax.config.update("jax_platforms", "cpu")
        try:                                # load the plugins now, while their lines are filtered
            from jax._src import xla_bridge
            xla_bridge._discover_and_register_pjrt_plugins()
        except (ImportError, AttributeError):
            pass
    return None if chose else "cpu"
