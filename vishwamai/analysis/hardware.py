"""Per-chip hardware: the one table every chip's figures come from, each with its source.

Conventions:
- Every figure is per chip (a TPU chip may hold two TensorCores; a GPU is one chip) and in SI
  base units in code: bytes, bytes/s, FLOP/s. A source that states GiB is converted exactly
  (1 GiB = 2**30 B) and says so. The book prints memory in GiB, bandwidth in GB/s (1e9 B/s) and
  compute in TFLOP/s (`UNITS`, `table`), one unit per quantity everywhere.
- FLOP/s are dense peaks (no 2:4 structured sparsity: NVIDIA prints the sparse figure with an
  asterisk; the dense one is half of it).
- Networks, three tiers, each bytes/s in one direction:
  * `link_bw` x `links`: a TPU chip's ICI links to its torus neighbours (the chip's stated
    bidirectional ICI figure = 2 x links x link_bw). `torus` is the slice's dimensionality;
    `wraparound` says when the ends of an axis are joined (a ring) rather than open (a line).
  * `nvlink_bw` within a GPU's NVLink domain of `nvlink_domain` GPUs (8: an HGX/DGX server
    behind NVSwitch; 72: a GB200 NVL72 rack); the stated figure is bidirectional, per GPU.
  * `scale_out_bw`: what one chip gets of the data-centre network between TPU slices (DCN, a
    host's NICs shared by its chips) or between GPU servers (InfiniBand/RoCE, one NIC per GPU).
- `hbm_bytes` is the datasheet's capacity; `compiler_hbm_bytes` is what XLA:TPU (libtpu
  0.0.42.1) allows one chip's program, read from its own out-of-memory verdict
  (`vishwamai.aot.compiler_hbm_bytes`); tests/test_hardware.py holds the two in one unit.
- On CPU nothing is assumed: `cpu_spec` measures peak FLOP/s and bandwidth once and every
  chapter reads that one measurement.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax

from vishwamai.analysis.cpu import CPU_SPEC_PATH, cpu_spec, measure_cpu_peak  # noqa: F401

GiB = 2**30
GB = 10**9
T = 10**12
Gbit = 10**9 / 8          # one Gb/s in bytes/s

#: How the book prints each quantity: (unit label, bytes or FLOP/s per unit).
UNITS = {"memory": ("GiB", GiB), "bandwidth": ("GB/s", GB), "compute": ("TFLOP/s", T)}


@dataclass(frozen=True)
class Chip:
    """One accelerator chip; every number per chip, in bytes, bytes/s or FLOP/s.

    Attributes:
      name: key in `HARDWARE`; vendor: 'google' | 'nvidia'.
      bf16_flops: dense peak bf16 FLOP/s; fp8_flops, int8_ops, fp32_flops: where stated.
      hbm_bytes, hbm_bw: HBM capacity (datasheet) and bandwidth.
      compiler_hbm_bytes: the TPU compiler's allowance per chip (None: no compiler reading).
      link_bw, links: one-direction bytes/s of one ICI link, and links per chip (TPU).
      torus, wraparound, max_slice: '2D'/'3D'; when axes close into rings; largest slice shape.
      wrap_at, max_slice_chips: the rule in numbers (3D: every axis a multiple of wrap_at; 2D:
        an axis of length wrap_at is a ring) and the most chips one ICI slice holds.
      nvlink_bw, nvlink_domain: NVLink bytes/s per GPU (bidirectional, as stated) and GPUs
        per NVLink domain (GPU).
      scale_out_bw: data-centre network bytes/s per chip, one direction (DCN per TPU host /
        its chips; InfiniBand/RoCE NIC per GPU).
      chips_per_host, cores_per_chip: chips per host VM / server; TensorCores per TPU chip.
      clock_hz: TensorCore clock (TPU): bf16 peak / the bf16 FLOPs per cycle of its matrix
        units, as the TPU compiler's cost model counts them (`CLOCK_SOURCE`); turns the
        compiler's estimated cycles into seconds (`analysis.clock`).
      source, notes: where the numbers come from; caveats and exceptions.
    """

    name: str
    vendor: str
    bf16_flops: float
    hbm_bytes: float
    hbm_bw: float
    fp8_flops: float | None = None
    int8_ops: float | None = None
    fp32_flops: float | None = None
    compiler_hbm_bytes: float | None = None
    link_bw: float | None = None
    links: int | None = None
    torus: str = ""
    wraparound: str = ""
    max_slice: str = ""
    wrap_at: int | None = None
    max_slice_chips: int | None = None
    nvlink_bw: float | None = None
    nvlink_domain: int | None = None
    scale_out_bw: float | None = None
    chips_per_host: int = 1
    cores_per_chip: int = 1
    source: str = ""
    notes: str = ""
    clock_hz: float | None = None

    @property
    def ici_bw(self) -> float | None:
        """Chip-to-chip bandwidth per chip, bidirectional, as datasheets state it (TPU ICI:
        2 x links x link_bw; GPU: NVLink); None where not stated."""
        if self.link_bw is not None and self.links:
            return 2 * self.links * self.link_bw
        return self.nvlink_bw

    @property
    def dcn_bw(self) -> float | None:
        """One host's (or server's) data-centre network bandwidth, one direction."""
        return None if self.scale_out_bw is None else self.scale_out_bw * self.chips_per_host

    @property
    def ridge_intensity(self) -> float:
        """FLOPs per HBM byte at which bf16 compute and bandwidth take equal time."""
        return self.bf16_flops / self.hbm_bw

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ici_bw": self.ici_bw, "dcn_bw": self.dcn_bw}


_TPU_V4, _TPU_V5E, _TPU_V5P, _TPU_V6E, _TPU_7X = (
    f"cloud.google.com/tpu/docs/{g}" for g in ("v4", "v5e", "v5p", "v6e", "tpu7x"))
_BOOK = "jax-ml.github.io/scaling-book (How to think about TPUs: per-link ICI table)"
#: Where `clock_hz` comes from: peak / FLOPs per cycle per chip. XLA:TPU (libtpu 0.0.42.1)
#: gives an 8192^3 bf16 matmul split over four chips (tpu7x: eight TensorCores) 1.108 M (v4),
#: 2.167 M (v5e), 1.088 M (v5p), 0.607 M (v6e), 0.289 M (tpu7x, per TensorCore) estimated
#: cycles: 248 k, 127 k, 253 k, 453 k and 476 k FLOPs a cycle, 86-97% of 2 x the matrix units'
#: multiply-accumulates a cycle, 262,144 (v4, v5p: 2 TensorCores x 4 MXUs of 128 x 128),
#: 131,072 (v5e: 4 MXUs of 128 x 128), 524,288 (v6e; tpu7x per TensorCore: MXUs of
#: 256 x 256). v4's 1.05 GHz is the clock of Jouppi et al., "TPU v4" (ISCA 2023, Table 1).
CLOCK_SOURCE = ("bf16 peak / FLOPs per cycle of the matrix units, the rate XLA:TPU's cost model "
                "gives a large bf16 matmul (measure.hlo_cost cycles); v4 1.05 GHz: Jouppi et "
                "al., ISCA 2023")

HARDWARE: dict[str, Chip] = {
    # "45 teraflops (bf16)", "16 GiB, 600 GBps" per chip; v2-8 = one host, 4 chips, 8 cores.
    "tpu_v2": Chip("tpu_v2", "google", bf16_flops=45 * T, hbm_bytes=16 * GiB, hbm_bw=600 * GB,
                   chips_per_host=4, cores_per_chip=2, source="cloud.google.com/tpu/docs/v2",
                   notes="v2-8: 4 chips / 8 cores per host (180 TFLOP/s per host)."),
    # "Peak compute per chip 123 teraflops (bf16)", "32 GiB, 900 GBps". A v3-8 is 4 chips:
    # 4 x 123 = 492 TFLOP/s, the figure the book uses; the 2018 announcement's "420 teraflops"
    # per board is an older figure (appendix_errata tells the story once).
    "tpu_v3": Chip("tpu_v3", "google", bf16_flops=123 * T, hbm_bytes=32 * GiB, hbm_bw=900 * GB,
                   chips_per_host=4, cores_per_chip=2, source="cloud.google.com/tpu/docs/v3",
                   notes="v3-8: 4 chips / 8 cores per host, 128 GiB HBM in all."),
    # "275 teraflops (bf16 or int8)", "32 GiB, 1200 GBps", 3D mesh; a 3D torus on slices of
    # whole 4x4x4 cubes (AxBxC with 2A=B=C or 2A=2B=C, each a multiple of 4), 4096 chips a pod.
    # ICI: 4.5e10 B/s per link one way (scaling book), 6 links. DCN: no per-chip figure found.
    "tpu_v4": Chip("tpu_v4", "google", bf16_flops=275 * T, int8_ops=275 * T, hbm_bytes=32 * GiB,
                   clock_hz=275 * T / 262_144,
                   hbm_bw=1200 * GB, compiler_hbm_bytes=33_017_561_088, link_bw=45 * GB,
                   links=6, torus="3D", wraparound="slices of whole 4x4x4 cubes",
                   max_slice="16x16x16", wrap_at=4, max_slice_chips=4096,
                   chips_per_host=4, cores_per_chip=2,
                   source=f"{_TPU_V4}; ICI per link: {_BOOK}",
                   notes="Megacore: the 2 TensorCores act as one device."),
    # "197 TFLOPs" bf16, "393 TOPs" int8, "16 GB, 819 GBps", "ICI (per chip) 400 GBps",
    # "ICI ports per chip 4", "2D torus", 256 chips a pod, 8 chips a host, "2 x 100 Gbps NIC" a
    # host. HBM: the page's "16 GB" is 16 GiB: the compiler itself allows 15.75 GiB
    # (16.91e9 B), more than 16e9 B could hold.
    "tpu_v5e": Chip("tpu_v5e", "google", bf16_flops=197 * T, int8_ops=393 * T, hbm_bytes=16 * GiB,
                    clock_hz=197 * T / 131_072,
                    hbm_bw=819 * GB, compiler_hbm_bytes=16_911_433_728, link_bw=50 * GB, links=4,
                    torus="2D", wraparound="16-chip axes (full pod: 16x16)", max_slice="16x16",
                    wrap_at=16, max_slice_chips=256,
                    scale_out_bw=2 * 100 * Gbit / 8, chips_per_host=8, source=_TPU_V5E,
                    notes="HBM '16 GB' on the page is 16 GiB (see compiler_hbm_bytes)."),
    # "459" bf16 and fp8 TFLOPs, int8 918 TOPs (Google Cloud v5p announcement), "HBM capacity
    # per chip (GiB) 95", "2765 GBps", "ICI ... per chip 1200 GBps" (6 links), "DCN bandwidth
    # per chip (Gbps) 50", 3D torus (wraparound on full cubes), max slice 16x16x24.
    "tpu_v5p": Chip("tpu_v5p", "google", bf16_flops=459 * T, fp8_flops=459 * T, int8_ops=918 * T,
                    clock_hz=459 * T / 262_144,
                    hbm_bytes=95 * GiB, hbm_bw=2765 * GB, compiler_hbm_bytes=102_800_042_229.76,
                    link_bw=100 * GB, links=6, torus="3D",
                    wraparound="slices of whole 4x4x4 cubes", max_slice="16x16x24", wrap_at=4,
                    max_slice_chips=6144,
                    scale_out_bw=50 * Gbit, chips_per_host=4, cores_per_chip=2, source=_TPU_V5P,
                    notes=("The compiler allows 95.74 GiB, above the page's rounded '95 GiB': "
                           "the chip carries 96 GiB of HBM2e (six 16 GiB stacks) and the "
                           "runtime keeps 0.26 GiB. fp8 runs at the bf16 rate.")),
    # "918 TFLOPs" bf16, "1836 TOPs" int8, "32 GB, 1638 GBps", "ICI (per chip) 800 GBps", "ICI
    # ports per chip 4", "2D torus", 256 a pod, 8 a host. The page's "32 GB" is 32 GiB (the
    # compiler allows 31.25 GiB = 33.55e9 B). DCN: no per-host figure on the page: None.
    "tpu_v6e": Chip("tpu_v6e", "google", bf16_flops=918 * T, int8_ops=1836 * T, hbm_bytes=32 * GiB,
                    clock_hz=918 * T / 524_288,
                    hbm_bw=1638 * GB, compiler_hbm_bytes=33_554_432_000, link_bw=100 * GB,
                    links=4, torus="2D", wraparound="16-chip axes (full pod: 16x16)",
                    max_slice="16x16", wrap_at=16, max_slice_chips=256, chips_per_host=8,
                    source=_TPU_V6E,
                    notes="Trillium. HBM '32 GB' on the page is 32 GiB."),
    # TPU7x page: "Peak compute per chip (BF16) 2307", "(FP8) 4614", "HBM capacity per chip
    # (GiB) 192", two TensorCores a chip, 9,216 chips a pod, 3D torus; HBM 7.37 TB/s and ICI
    # 1.2 TB/s bidirectional per chip (Google, "Ironwood" announcement, April 2025), 6 links.
    # Compiler: each TensorCore is a device holding 94.75 GiB; the chip 189.5 GiB.
    "tpu7x": Chip("tpu7x", "google", bf16_flops=2307 * T, fp8_flops=4614 * T,
                  clock_hz=2307 * T / 2 / 524_288,
                  hbm_bytes=192 * GiB, hbm_bw=7370 * GB, compiler_hbm_bytes=2 * 101_737_037_824,
                  link_bw=100 * GB, links=6, torus="3D", wraparound="slices of whole 4x4x4 cubes",
                  max_slice="9,216-chip pod", wrap_at=4, max_slice_chips=9216,
                  chips_per_host=4, cores_per_chip=2,
                  source=f"{_TPU_7X}; blog.google Ironwood (HBM and ICI bandwidth)",
                  notes="Ironwood. Topologies 'tpu7x:AxBxC'; one JAX device per TensorCore."),
    # A100 80GB SXM datasheet: BF16 312 TFLOPS dense (624 sparse), INT8 624 TOPS dense, FP32
    # 19.5, 80 GB HBM2e, 2,039 GB/s, NVLink 600 GB/s; no fp8. DGX A100: 8 GPUs on NVSwitch,
    # one 200 Gb/s HDR InfiniBand NIC per GPU.
    "a100_80gb": Chip("a100_80gb", "nvidia", bf16_flops=312 * T, int8_ops=624 * T,
                      fp32_flops=19.5 * T, hbm_bytes=80 * GB, hbm_bw=2039 * GB,
                      nvlink_bw=600 * GB, nvlink_domain=8, scale_out_bw=200 * Gbit,
                      chips_per_host=8, source="NVIDIA A100 datasheet (80GB SXM); DGX A100 guide",
                      notes="HGX/DGX A100: 8 GPUs per server over NVSwitch."),
    # H100 SXM datasheet: BF16 1,979 / FP8 3,958 TFLOPS with sparsity -> 989.5 / 1,979 dense;
    # INT8 1,979 TOPS dense; FP32 67; 80 GB HBM3; 3.35 TB/s; NVLink 900 GB/s. DGX H100: 8 GPUs,
    # one 400 Gb/s ConnectX-7 NDR NIC per GPU.
    "h100": Chip("h100", "nvidia", bf16_flops=989.5 * T, fp8_flops=1979 * T, int8_ops=1979 * T,
                 fp32_flops=67 * T, hbm_bytes=80 * GB, hbm_bw=3350 * GB, nvlink_bw=900 * GB,
                 nvlink_domain=8, scale_out_bw=400 * Gbit, chips_per_host=8,
                 source="NVIDIA H100 datasheet (SXM); DGX H100 guide",
                 notes="HGX/DGX H100: 8 GPUs per server over NVSwitch."),
    # H200 SXM datasheet: Hopper compute as the H100 SXM, 141 GB HBM3e, 4.8 TB/s, NVLink 900.
    "h200": Chip("h200", "nvidia", bf16_flops=989.5 * T, fp8_flops=1979 * T, int8_ops=1979 * T,
                 fp32_flops=67 * T, hbm_bytes=141 * GB, hbm_bw=4800 * GB, nvlink_bw=900 * GB,
                 nvlink_domain=8, scale_out_bw=400 * Gbit, chips_per_host=8,
                 source="NVIDIA H200 datasheet (SXM); HGX H200 reference servers",
                 notes="HGX H200: 8 GPUs per server over NVSwitch."),
    # DGX B200 datasheet: 72 PFLOPS FP8 training / 8 GPUs with sparsity -> 4.5 PFLOPS FP8 and
    # 2.25 PFLOPS BF16 dense per GPU; INT8 4.5 POPS dense; 1,440 GB HBM3e / 8 = 180 GB; 64 TB/s
    # / 8 = 8 TB/s; NVLink 5 1.8 TB/s per GPU; 8 x 400 Gb/s ConnectX-7 NICs.
    "b200": Chip("b200", "nvidia", bf16_flops=2250 * T, fp8_flops=4500 * T, int8_ops=4500 * T,
                 hbm_bytes=180 * GB, hbm_bw=8000 * GB, nvlink_bw=1800 * GB, nvlink_domain=8,
                 scale_out_bw=400 * Gbit, chips_per_host=8, source="NVIDIA DGX B200 datasheet",
                 notes="HGX/DGX B200: 8 GPUs per server over NVSwitch."),
    # GB200 NVL72 datasheet (72 GPUs): FP8 720 PFLOPS, BF16 360 PFLOPS, INT8 720 POPS, all with
    # sparsity -> 5 / 2.5 / 5 per GPU dense; 13.4 TB HBM3e (186 GB a GPU), 576 TB/s (8 TB/s a
    # GPU); NVLink 130 TB/s (1.8 TB/s a GPU) across all 72; one 400 Gb/s NIC per GPU.
    "gb200": Chip("gb200", "nvidia", bf16_flops=2500 * T, fp8_flops=5000 * T, int8_ops=5000 * T,
                  hbm_bytes=186 * GB, hbm_bw=8000 * GB, nvlink_bw=1800 * GB, nvlink_domain=72,
                  scale_out_bw=400 * Gbit, chips_per_host=4,
                  source="NVIDIA GB200 NVL72 datasheet",
                  notes="NVL72: 72 GPUs (18 trays of 4) in one NVLink domain."),
}

# Short names the book and the planner accept.
ALIASES = {
    "v2": "tpu_v2", "v3": "tpu_v3", "v3-8": "tpu_v3", "v4": "tpu_v4", "v5e": "tpu_v5e",
    "v5p": "tpu_v5p", "v6e": "tpu_v6e", "v7x": "tpu7x", "ironwood": "tpu7x", "tpu_v7x": "tpu7x",
    "a100": "a100_80gb", "A100": "a100_80gb", "H100": "h100", "H200": "h200", "B200": "b200",
    "GB200": "gb200",
}


def get_chip(name: str | Chip) -> Chip:
    """The `HARDWARE` entry for `name` (a key or an alias such as 'v5e', 'H100')."""
    if isinstance(name, Chip):
        return name
    key = ALIASES.get(name, name)
    if key not in HARDWARE:
        raise ValueError(f"unknown hardware {name!r}; accepted: {sorted(HARDWARE) + sorted(ALIASES)}")
    return HARDWARE[key]


def table(names=None) -> list[dict]:
    """The table in the book's units (`UNITS`): one dict per chip, numbers rounded for print,
    None where no source states the figure."""
    def u(x, kind, nd=1):
        return None if x is None else round(x / UNITS[kind][1], nd)
    rows = []
    for c in (get_chip(n) for n in (names or HARDWARE)):
        rows.append({
            "chip": c.name, "bf16 TFLOP/s": u(c.bf16_flops, "compute"),
            "fp8 TFLOP/s": u(c.fp8_flops, "compute"), "int8 TOP/s": u(c.int8_ops, "compute"),
            "HBM GiB": u(c.hbm_bytes, "memory", 2),
            "compiler HBM GiB": u(c.compiler_hbm_bytes, "memory", 2),
            "HBM GB/s": u(c.hbm_bw, "bandwidth", 0),
            "ICI GB/s per link": u(c.link_bw, "bandwidth", 0), "links": c.links,
            "torus": c.torus or None, "wraparound": c.wraparound or None,
            "NVLink GB/s": u(c.nvlink_bw, "bandwidth", 0), "NVLink domain": c.nvlink_domain,
            "scale-out GB/s per chip": u(c.scale_out_bw, "bandwidth", 2),
            "chips/host": c.chips_per_host, "source": c.source})
    return rows


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
        if "7x" in k or "v7" in k:
            return "tpu7x"
        for gen in ("v5", "v4", "v3", "v2"):
            if gen in k:
                return "tpu_v5p" if gen == "v5" else f"tpu_{gen}"
        return None
    for key in ("gb200", "b200", "h200"):
        if key in k:
            return key
    if "h100" in k and "pcie" not in k:
        return "h100"
    if "a100" in k and "40gb" not in k and "pcie" not in k:
        return "a100_80gb"
    return None


def detect_device(device=None) -> str:
    """Maps a JAX device (default: `jax.devices()[0]`) or its `device_kind` to a `HARDWARE`
    key, 'cpu', or 'unknown' ('TPU v5 lite' -> 'tpu_v5e', 'NVIDIA H100 80GB HBM3' -> 'h100';
    variants with other specs, such as A100 40GB or PCIe cards, give 'unknown')."""
    if device is None:
        device = jax.devices()[0]
    kind = device if isinstance(device, str) else device.device_kind
    if not isinstance(device, str) and getattr(device, "platform", "") == "cpu":
        return "cpu"
    return _kind_to_name(kind) or "unknown"


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
      (flops_per_s, source). On TPU/GPU the table's dense peak. On CPU `cpu_spec`'s measured
      float32 matmul (this CPU has no bf16 units: every dtype reads it). On TPU a float32
      matmul at JAX's default precision runs on the bf16 MXU, so float32 reads the bf16 peak.
      A dtype the chip has no figure for raises `ValueError`; an unrecognised accelerator
      returns (nan, reason).
    """
    if isinstance(device, Chip):
        name = device.name
    elif isinstance(device, str) and (device in HARDWARE or device in ALIASES):
        name = get_chip(device).name
    else:
        name = detect_device(device)
    if name == "cpu":
        return cpu_spec()["peak_flops"], "measured: jitted float32 matmul on this CPU"
    if name == "unknown":
        return float("nan"), "no HARDWARE entry for this device kind"
    chip = HARDWARE[name]
    kind = _normalise_dtype(dtype)
    if kind == "bf16":
        return chip.bf16_flops, f"{chip.source}: bf16 dense peak"
    if kind in ("fp8", "int8"):
        value = chip.fp8_flops if kind == "fp8" else chip.int8_ops
        if value is None:
            raise ValueError(f"{name} has no {kind} peak in its source ({chip.source})")
        return value, f"{chip.source}: {kind} dense peak"
    if chip.vendor == "google":
        return chip.bf16_flops, f"{chip.source}: bf16 peak (f32 matmuls run on the bf16 MXU)"
    if chip.fp32_flops is None:
        raise ValueError(f"{name} has no float32 peak in its source ({chip.source})")
    return chip.fp32_flops, f"{chip.source}: fp32 (non-tensor-core) peak"


def hbm_bandwidth(device=None) -> tuple[float, str]:
    """HBM bytes/s of one chip and its source; on CPU `cpu_spec`'s measured streaming rate;
    (nan, reason) for an unknown device."""
    name = get_chip(device).name if isinstance(device, (str, Chip)) and device != "cpu" \
        else detect_device(device)
    if name == "cpu":
        return cpu_spec()["stream_bw"], "measured: one jitted elementwise pass on this CPU"
    if name == "unknown":
        return float("nan"), "no HBM bandwidth table entry for this device kind"
    chip = HARDWARE[name]
    return chip.hbm_bw, chip.source
