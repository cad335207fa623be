"""Per-chip hardware specifications: the one table every peak FLOP/s and bandwidth comes from.

Conventions:
- Every figure is per chip (a TPU chip may hold two TensorCores; a GPU is one chip).
- FLOP/s are dense peaks (no 2:4 structured sparsity). NVIDIA's datasheets print the sparse
  figure with an asterisk; the dense one is half of it.
- Bytes and bytes/s are SI (1 GB = 1e9 B) unless the source says GiB, in which case the entry is
  converted exactly (1 GiB = 2**30 B) and the comment says so.
- `ici_bw` is the chip's total bidirectional chip-to-chip bandwidth as the source states it
  (TPU ICI; NVLink on GPUs), or None where the source gives no per-chip figure.
- `dcn_bw` is one host's data-centre network bandwidth (all its NICs together, one
  direction, bytes/s): what chips on different hosts (or slices) share, or None where no
  source was found.
- On CPU nothing is assumed: `peak_flops` measures a large jitted float32 matmul on the spot
  (`measure_cpu_peak`), once per process.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import jax

from vishwamai.measure import matmul_peak

GiB = 2**30
GB = 10**9
TB = 10**12
T = 10**12


@dataclass(frozen=True)
class Chip:
    """One accelerator chip.

    Attributes:
      name: key in `HARDWARE`.
      bf16_flops: dense peak bf16 FLOP/s (matmul units).
      fp8_flops, int8_ops, fp32_flops: dense peaks where the source gives one, else None.
      hbm_bytes: high-bandwidth memory per chip, bytes.
      hbm_bw: HBM bandwidth, bytes/s.
      ici_bw: chip-to-chip bandwidth, bytes/s, bidirectional, per chip (None: not stated).
      dcn_bw: data-centre network bandwidth of one host, bytes/s, one direction (None: not
        stated).
      chips_per_host: chips attached to one host VM / server.
      cores_per_chip: TensorCores per TPU chip (1 for GPUs).
      source: where the numbers come from.
      notes: slice naming, caveats.
    """

    name: str
    vendor: str
    bf16_flops: float
    hbm_bytes: float
    hbm_bw: float
    fp8_flops: float | None = None
    int8_ops: float | None = None
    fp32_flops: float | None = None
    ici_bw: float | None = None
    dcn_bw: float | None = None
    chips_per_host: int = 1
    cores_per_chip: int = 1
    source: str = ""
    notes: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def ridge_intensity(self) -> float:
        """FLOPs per HBM byte at which bf16 compute and bandwidth take equal time."""
        return self.bf16_flops / self.hbm_bw


HARDWARE: dict[str, Chip] = {
    # Source: cloud.google.com/tpu/docs/v2 ("45 teraflops (bf16)", "16 GiB, 600 GBps" per chip);
    # v2-8 = one host, 4 chips, 8 TensorCores.
    "tpu_v2": Chip("tpu_v2", "google", bf16_flops=45 * T, hbm_bytes=16 * GiB, hbm_bw=600 * GB,
                   chips_per_host=4, cores_per_chip=2,
                   source="cloud.google.com/tpu/docs/v2",
                   notes="v2-8: 4 chips / 8 cores per host (180 TFLOP/s per host)."),
    # Source: cloud.google.com/tpu/docs/v3 ("Peak compute per chip 123 teraflops (bf16)",
    # "HBM2 capacity and bandwidth 32 GiB, 900 GBps"). A v3-8 is 4 chips = 492 TFLOP/s; the
    # "420 TFLOPS" of the 2018 Cloud TPU v3 announcement (and of the seed) is an older board figure.
    "tpu_v3": Chip("tpu_v3", "google", bf16_flops=123 * T, hbm_bytes=32 * GiB, hbm_bw=900 * GB,
                   chips_per_host=4, cores_per_chip=2,
                   source="cloud.google.com/tpu/docs/v3",
                   notes="v3-8: 4 chips / 8 cores per host, 128 GiB HBM in all."),
    # Source: cloud.google.com/tpu/docs/v4 ("275 teraflops (bf16 or int8)", "32 GiB, 1200 GBps").
    # ICI: the Cloud page gives no per-chip figure; the scaling book (jax-ml.github.io/
    # scaling-book, "How to think about TPUs", ICI table) gives v4 4.5e10 B/s per link one way,
    # and a v4 chip has 6 links (3D torus): 4.5e10 * 6 * 2 directions = 540 GB/s bidirectional.
    "tpu_v4": Chip("tpu_v4", "google", bf16_flops=275 * T, int8_ops=275 * T, hbm_bytes=32 * GiB,
                   hbm_bw=1200 * GB, ici_bw=540 * GB, chips_per_host=4, cores_per_chip=2,
                   source="cloud.google.com/tpu/docs/v4",
                   notes="v4-8: 4 chips per host (megacore: 2 TensorCores act as one device)."),
    # Source: cloud.google.com/tpu/docs/v5e ("197 TFLOPs" bf16, "393 TOPs" int8,
    # "16 GB, 819 GBps", "ICI bandwidth (per chip) 400 GBps", "Chips per host 8").
    # DCN: same page, "Per-host NIC configuration 2 x 100 Gbps NIC" = 25 GB/s per host.
    "tpu_v5e": Chip("tpu_v5e", "google", bf16_flops=197 * T, int8_ops=393 * T, hbm_bytes=16 * GB,
                    hbm_bw=819 * GB, ici_bw=400 * GB, dcn_bw=2 * 100e9 / 8, chips_per_host=8,
                    source="cloud.google.com/tpu/docs/v5e",
                    notes="v5litepod-8: 8 chips per host, 1 TensorCore each."),
    # Source: cloud.google.com/tpu/docs/v5p ("Peak compute per chip (BF16) 459", "(FP8) 459",
    # "HBM capacity per chip (GiB) 95", "HBM bandwidth 2765 GBps", "ICI ... per chip 1200 GBps").
    # int8 918 TOPs: Google Cloud blog announcing v5p (Dec 2023).
    "tpu_v5p": Chip("tpu_v5p", "google", bf16_flops=459 * T, fp8_flops=459 * T, int8_ops=918 * T,
                    hbm_bytes=95 * GiB, hbm_bw=2765 * GB, ici_bw=1200 * GB, chips_per_host=4,
                    cores_per_chip=2, source="cloud.google.com/tpu/docs/v5p",
                    notes="v5p-8: 4 chips per host (megacore). fp8 runs at the bf16 rate."),
    # Source: cloud.google.com/tpu/docs/v6e ("Peak compute per chip (bf16) 918 TFLOPs",
    # "(Int8) 1836 TOPs", "HBM capacity per chip 32 GB", "1638 GBps", "ICI (per chip) 800 GBps",
    # "Chips per host 8").
    "tpu_v6e": Chip("tpu_v6e", "google", bf16_flops=918 * T, int8_ops=1836 * T, hbm_bytes=32 * GB,
                    hbm_bw=1638 * GB, ici_bw=800 * GB, chips_per_host=8,
                    source="cloud.google.com/tpu/docs/v6e",
                    notes="Trillium. v6e-8: 8 chips per host, 1 TensorCore each."),
    # Source: NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM column): BF16 312 TFLOPS
    # dense (624 with sparsity), INT8 624 TOPS dense, FP32 19.5 TFLOPS, 80 GB HBM2e,
    # 2,039 GB/s, NVLink 600 GB/s. No fp8 on Ampere.
    # DCN: NVIDIA DGX A100 user guide, 8 x 200 Gb/s HDR InfiniBand compute NICs = 200 GB/s.
    "a100_80gb": Chip("a100_80gb", "nvidia", bf16_flops=312 * T, int8_ops=624 * T,
                      fp32_flops=19.5 * T, hbm_bytes=80 * GB, hbm_bw=2039 * GB, ici_bw=600 * GB,
                      dcn_bw=8 * 200e9 / 8,
                      chips_per_host=8, source="NVIDIA A100 datasheet (80GB SXM)",
                      notes="HGX/DGX A100: 8 GPUs per server over NVSwitch."),
    # Source: NVIDIA H100 Tensor Core GPU datasheet (H100 SXM column): BF16 1,979 TFLOPS and FP8
    # 3,958 TFLOPS *with sparsity*, i.e. 989.5 / 1,979 dense; INT8 1,979 TOPS dense; FP32 67
    # TFLOPS; 80 GB HBM3; 3.35 TB/s; NVLink 900 GB/s.
    # DCN: NVIDIA DGX H100 user guide, 8 x 400 Gb/s ConnectX-7 compute NICs = 400 GB/s per host
    # (torchtitan's Grand Teton H100 hosts state the same 400 Gb/s per GPU).
    "h100": Chip("h100", "nvidia", bf16_flops=989.5 * T, fp8_flops=1979 * T, int8_ops=1979 * T,
                 fp32_flops=67 * T, hbm_bytes=80 * GB, hbm_bw=3350 * GB, ici_bw=900 * GB,
                 dcn_bw=8 * 400e9 / 8,
                 chips_per_host=8, source="NVIDIA H100 datasheet (SXM)",
                 notes="HGX/DGX H100: 8 GPUs per server over NVSwitch."),
    # Source: NVIDIA H200 Tensor Core GPU datasheet (H200 SXM column): same Hopper compute as the
    # H100 SXM (BF16 1,979 / FP8 3,958 TFLOPS with sparsity -> 989.5 / 1,979 dense), 141 GB
    # HBM3e, 4.8 TB/s, NVLink 900 GB/s. DCN: HGX H200 reference servers, 8 x 400 Gb/s NICs.
    "h200": Chip("h200", "nvidia", bf16_flops=989.5 * T, fp8_flops=1979 * T, int8_ops=1979 * T,
                 fp32_flops=67 * T, hbm_bytes=141 * GB, hbm_bw=4800 * GB, ici_bw=900 * GB,
                 dcn_bw=8 * 400e9 / 8,
                 chips_per_host=8, source="NVIDIA H200 datasheet (SXM)",
                 notes="HGX H200: 8 GPUs per server over NVSwitch."),
}

# Short names the book and the planner accept.
ALIASES = {
    "v2": "tpu_v2", "v3": "tpu_v3", "v3-8": "tpu_v3", "v4": "tpu_v4", "v5e": "tpu_v5e",
    "v5p": "tpu_v5p", "v6e": "tpu_v6e", "a100": "a100_80gb", "A100": "a100_80gb",
    "H100": "h100", "H200": "h200",
}


def get_chip(name: str | Chip) -> Chip:
    """The `HARDWARE` entry for `name` (a key or an alias such as 'v5e', 'H100')."""
    if isinstance(name, Chip):
        return name
    key = ALIASES.get(name, name)
    if key not in HARDWARE:
        raise ValueError(f"unknown hardware {name!r}; accepted: {sorted(HARDWARE) + sorted(ALIASES)}")
    return HARDWARE[key]


def _kind_to_name(kind: str) -> str | None:
    k = kind.lower().replace("_", " ")
    if k == "cpu" or k.startswith("cpu"):
        return "cpu"
    if "tpu" in k:
        # Order matters: "TPU v5 lite" is v5e, "TPU v5" / "TPU v5p" is v5p, "TPU v6 lite" is v6e.
        if "v5 lite" in k or "v5e" in k or "v5litepod" in k:
            return "tpu_v5e"
        if "v6" in k:
            return "tpu_v6e"
        for gen in ("v5", "v4", "v3", "v2"):
            if gen in k:
                return "tpu_v5p" if gen == "v5" else f"tpu_{gen}"
        return None
    if "h200" in k:
        return "h200"
    if "h100" in k and "pcie" not in k:
        return "h100"
    if "a100" in k and "40gb" not in k and "pcie" not in k:
        return "a100_80gb"
    return None


def detect_device(device=None) -> str:
    """Maps a JAX device (default: `jax.devices()[0]`) to a `HARDWARE` key, 'cpu', or 'unknown'.

    Matching uses `device.device_kind`, e.g. 'TPU v5 lite' -> 'tpu_v5e', 'NVIDIA H100 80GB HBM3'
    -> 'h100'. Variants with different specs (A100 40GB, PCIe cards) give 'unknown' rather than a
    wrong entry.
    """
    if device is None:
        device = jax.devices()[0]
    kind = device if isinstance(device, str) else device.device_kind
    if not isinstance(device, str) and getattr(device, "platform", "") == "cpu":
        return "cpu"
    return _kind_to_name(kind) or "unknown"


def measure_cpu_peak(dtype: str = "float32", n: int = 1024, repeats: int = 5) -> float:
    """Measured matmul FLOP/s of this host: median over `repeats` of a jitted [n,n]@[n,n].

    Counts 2*n**3 FLOPs per matmul; compile and a warm-up call are excluded. Cached per process
    (same arguments -> same number), so a notebook pays for it once.
    """
    return _measure_matmul(str(getattr(dtype, "name", dtype)), int(n), int(repeats))


@functools.cache
def _measure_matmul(dtype: str, n: int, repeats: int) -> float:
    return matmul_peak(dtype, n, repeats)


def _normalise_dtype(dtype) -> str:
    s = str(getattr(dtype, "name", dtype)).lower()
    if s in ("bf16", "bfloat16", "float16", "fp16", "half"):
        return "bf16"
    if s.startswith("float8") or s in ("fp8", "e4m3", "e5m2"):
        return "fp8"
    if s in ("int8", "i8"):
        return "int8"
    if s in ("float32", "fp32", "f32", "single"):
        return "fp32"
    raise ValueError(f"unknown dtype {dtype!r}; accepted: bfloat16, float16, float8*, int8, float32")


def peak_flops(dtype="bfloat16", device=None) -> tuple[float, str]:
    """Peak matmul FLOP/s of one chip and where the number comes from.

    Args:
      dtype: 'bfloat16' (also float16), 'float8_*'/'fp8', 'int8' or 'float32'.
      device: None (the first JAX device), a JAX device, a `HARDWARE` key/alias, or 'cpu'.

    Returns:
      (flops_per_s, source). On TPU/GPU the table entry (dense peak). On CPU the peak is
      measured on the spot by a jitted float32 matmul (`measure_cpu_peak`), never assumed; this
      CPU has no bf16 matmul units, so every dtype reads the float32 measurement. On TPU a
      float32 matmul at JAX's default precision runs on the bf16 MXU, so float32 reads the bf16
      peak. A dtype the chip has no figure for raises `ValueError`; an unrecognised accelerator
      returns (nan, reason).
    """
    if isinstance(device, Chip):
        name = device.name
    elif isinstance(device, str) and (device in HARDWARE or device in ALIASES):
        name = get_chip(device).name
    else:
        name = detect_device(device)
    if name == "cpu":
        return measure_cpu_peak(), "measured: jitted float32 matmul on this CPU"
    if name == "unknown":
        return float("nan"), "no HARDWARE entry for this device kind"
    chip = HARDWARE[name]
    kind = _normalise_dtype(dtype)
    if kind == "bf16":
        return chip.bf16_flops, f"{chip.source}: bf16 dense peak"
    if kind == "fp8":
        if chip.fp8_flops is None:
            raise ValueError(f"{name} has no fp8 matmul peak in its source ({chip.source})")
        return chip.fp8_flops, f"{chip.source}: fp8 dense peak"
    if kind == "int8":
        if chip.int8_ops is None:
            raise ValueError(f"{name} has no int8 peak in its source ({chip.source})")
        return chip.int8_ops, f"{chip.source}: int8 dense peak"
    if chip.vendor == "google":
        return chip.bf16_flops, f"{chip.source}: bf16 peak (f32 matmuls run on the bf16 MXU)"
    if chip.fp32_flops is None:
        raise ValueError(f"{name} has no float32 peak in its source ({chip.source})")
    return chip.fp32_flops, f"{chip.source}: fp32 (non-tensor-core) peak"


def hbm_bandwidth(device=None) -> tuple[float, str]:
    """HBM bytes/s of one chip and its source; (nan, reason) on CPU or an unknown device."""
    name = get_chip(device).name if isinstance(device, (str, Chip)) and device != "cpu" \
        else detect_device(device)
    if name in ("cpu", "unknown"):
        return float("nan"), f"no HBM bandwidth table entry for {name}"
    chip = HARDWARE[name]
    return chip.hbm_bw, chip.source
