"""TPU slices without the chips: libtpu's presence (`have_libtpu`, `require_libtpu`, and the quiet
environment its import needs on a host without TPUs, set when this module is imported), topology
names (`parse_topology`, `topology_devices`, `topology_mesh`), the compiler's out-of-memory
verdicts read from its message (`parse_oom`) and the HBM a generation's compiler accepts
(`compiler_hbm_bytes`).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vishwamai import sharding as _sh


GENERATIONS = {
    "v4": ("tpu_v4", "megacore", 3),
    "v5e": ("tpu_v5e", "default", 2),
    "v5p": ("tpu_v5p", "megacore", 3),
    "v6e": ("tpu_v6e", "default", 2),
}
MODES = ("train", "forward", "decode")
LAYOUTS = _sh.LAYOUTS
TOPOLOGY_FORM = ("'<generation>:<AxB>' for v5e/v6e (e.g. 'v5e:2x2', 'v6e:8x8') or "
                 "'<generation>:<AxBxC>' for v4/v5p (e.g. 'v4:2x2x1', 'v5p:4x4x4'); "
                 f"generations {tuple(GENERATIONS)}")
_TOPOLOGY_RE = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+)+)$")
_GIB = 2 ** 30
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40, "P": 2 ** 50}


class LibtpuMissingError(ImportError):
    """libtpu (the TPU compiler) is not installed in this environment."""


# ============================================================================================
# environment
# ============================================================================================

def _tpu_chips_attached() -> bool:
    """Whether a Google TPU sits on this host's PCI bus (vendor 0x1ae0)."""
    root = "/sys/bus/pci/devices"
    try:
        for dev in os.listdir(root):
            try:
                with open(os.path.join(root, dev, "vendor")) as f:
                    if f.read().strip() == "0x1ae0":
                        return True
            except OSError:
                continue
    except OSError:
        return False
    return False


def _quiet_libtpu_env() -> None:
    if _tpu_chips_attached():
        return
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_HOST_BOUNDS", "1,1,1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


_quiet_libtpu_env()


def libtpu_version() -> str | None:
    """The installed libtpu's version, or None if it is not installed."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("libtpu")
        except PackageNotFoundError:
            return version("libtpu-nightly")
    except Exception:  # noqa: BLE001 - any failure means: not installed
        return None


def have_libtpu() -> bool:
    """True when the TPU compiler (libtpu) can be loaded here."""
    return importlib.util.find_spec("libtpu") is not None


def require_libtpu() -> None:
    """Raises `LibtpuMissingError` with the install command when libtpu is missing."""
    if not have_libtpu():
        raise LibtpuMissingError(
            "compiling for a TPU topology needs the TPU compiler, libtpu, which is not "
            f'installed; install it with: pip install "jax[tpu]=={jax.__version__}"')


# ============================================================================================
# topologies
# ============================================================================================

def parse_topology(topology: str) -> dict:
    """`'v5e:2x2'` -> `{'generation', 'hardware', 'dims', 'chips', 'name'}`.

    Raises:
      ValueError: a name not of the accepted form (the message gives it).
    """
    m = _TOPOLOGY_RE.match(topology.strip()) if isinstance(topology, str) else None
    if m is None:
        raise ValueError(f"topology={topology!r} is not a TPU topology name; accepted: "
                         f"{TOPOLOGY_FORM}")
    gen, dims_s = m.groups()
    dims = tuple(int(d) for d in dims_s.split("x"))
    hardware, _, n_axes = GENERATIONS[gen]
    if len(dims) != n_axes or min(dims) < 1:
        raise ValueError(f"topology={topology!r}: {gen} takes {n_axes} positive axes; "
                         f"accepted: {TOPOLOGY_FORM}")
    return {"generation": gen, "hardware": hardware, "dims": dims,
            "chips": int(np.prod(dims)), "name": f"{gen}:{dims_s}"}


@functools.lru_cache(maxsize=None)
def topology_devices(topology: str) -> tuple:
    """The compile-only devices of a TPU topology (one per chip; v4/v5p as megacore chips).

    Host-sized and smaller slices (fewer than 2 chips on an axis) pass `chips_per_host_bounds`
    equal to the slice itself, as a single-chip host has; larger ones use libtpu's default
    host of 2x2x1 chips.
    """
    require_libtpu()
    t = parse_topology(topology)
    _quiet_libtpu_env()
    from jax.experimental import topologies
    dims3 = t["dims"] + (1,) * (3 - len(t["dims"]))
    kw = {"chip_config_name": GENERATIONS[t["generation"]][1]}
    if dims3[0] % 2 or dims3[1] % 2:
        kw["chips_per_host_bounds"] = (min(dims3[0], 2) if dims3[0] % 2 == 0 else 1,
                                       min(dims3[1], 2) if dims3[1] % 2 == 0 else 1, 1)
    desc = topologies.get_topology_desc(platform="tpu", topology_name=t["name"], **kw)
    devices = tuple(desc.devices)
    if len(devices) != t["chips"]:
        raise RuntimeError(f"topology {topology!r} gave {len(devices)} devices for "
                           f"{t['chips']} chips")
    return devices


def topology_mesh(topology: str, layout: str, expert: int = 1):
    """The `('data', 'fsdp', 'tensor')` mesh of a named layout over all chips of `topology`;
    with `expert > 1`, `expert` of them on an 'expert' axis and the rest on the layout's."""
    devices = topology_devices(topology)
    shape = _sh.layout_shape(layout, len(devices) // expert)
    return _sh.make_mesh(**shape, expert=expert, devices=list(devices))


# ============================================================================================
# out-of-memory verdicts
# ============================================================================================

_OOM_PATTERNS = (
    # "... the total memory required for HLO temporaries (41.32G) exceeds available HBM (15.75G)."
    re.compile(r"required for (?P<what>[\w ]+?) \((?P<need>[\d.]+)(?P<nu>[KMGTP]?)i?B?\) "
               r"exceeds available HBM \((?P<have>[\d.]+)(?P<hu>[KMGTP]?)i?B?\)"),
    # "Used 20.5G of 15.75G hbm. Exceeded hbm capacity by 4.75G."
    re.compile(r"Used (?P<need>[\d.]+)(?P<nu>[KMGTP]?)i?B? of (?P<have>[\d.]+)(?P<hu>[KMGTP]?)i?B?"
               r" hbm"),
)


def parse_oom(message: str) -> dict:
    """Bytes needed and available from an XLA:TPU out-of-memory message.

    The compiler prints sizes with binary prefixes ('37.25G' for 40e9 bytes). Returns
    `{'needed_bytes', 'available_bytes', 'needed_for', 'message'}`; the numbers are NaN when no
    known form matches. `message` is the first line that names the failure.
    """
    lines = [ln for ln in str(message).splitlines() if ln.strip()]
    first = next((ln for ln in lines if "RESOURCE_EXHAUSTED" in ln or "memory" in ln.lower()),
                 lines[0] if lines else "")
    for pat in _OOM_PATTERNS:
        m = pat.search(str(message))
        if m:
            g = m.groupdict()
            return {"needed_bytes": float(g["need"]) * _UNITS[g["nu"]],
                    "available_bytes": float(g["have"]) * _UNITS[g["hu"]],
                    "needed_for": (g.get("what") or "program").strip(), "message": first.strip()}
    return {"needed_bytes": math.nan, "available_bytes": math.nan, "needed_for": None,
            "message": first.strip()}


def _is_oom(exc: BaseException) -> bool:
    return "RESOURCE_EXHAUSTED" in str(exc) or "Ran out of memory" in str(exc)


#: A host-sized slice per generation (one chip of it serves single-chip compilations).
HOST_SLICE = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}


def _one_chip(generation: str):
    """A replicated sharding on one chip of `generation`."""
    mesh = jax.sharding.Mesh(np.array(topology_devices(HOST_SLICE[generation])[:1]), ("x",))
    return NamedSharding(mesh, P())


@functools.lru_cache(maxsize=None)
def compiler_hbm_bytes(generation: str) -> float:
    """The HBM per chip the TPU compiler allows a program, read from its own verdict on a
    program that cannot fit (a 1 TiB output on one chip)."""
    if generation not in GENERATIONS:
        raise ValueError(f"generation={generation!r} is not one of {tuple(GENERATIONS)}")
    f = jax.jit(lambda: jnp.zeros((2 ** 40,), jnp.int8), out_shardings=_one_chip(generation))
    try:
        f.lower().compile()
    except Exception as e:  # noqa: BLE001 - the verdict is the point
        return parse_oom(str(e))["available_bytes"]
    return math.nan


# ============================================================================================
# the three programs
# ============================================================================================
