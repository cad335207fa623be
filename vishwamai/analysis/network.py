"""Which network each mesh axis runs on, and what a collective over it costs.

Conventions:
- A mesh is `Mesh(data, fsdp, tensor, pipeline, slices)`. Axes are laid on the chips innermost
  first: tensor (the most traffic), then fsdp, data, pipeline; `slices` is an outer
  data-parallel axis between TPU slices (DCN). On GPUs there are no slices: the axes fill the
  NVLink domain (8 GPUs of an HGX server, 72 of an NVL72 rack) innermost first, and the part of
  an axis beyond the domain crosses InfiniBand/RoCE.
- A TPU slice of n chips has the generation's default torus shape (`slice_shape`); each mesh
  axis takes whole torus dimensions (or part of one), innermost first. On a dimension that
  closes into a ring (the chip's `wrap_at` rule) a ring collective sends both ways, over two
  links: 2 x link_bw; on an open line, or part of a dimension, 1 x link_bw. An axis over k
  dimensions uses all of them at once (the scaling book's multi-axis all-gather): bandwidths add.
- A collective over an axis that spans levels (NVLink inside, InfiniBand between servers; ICI
  inside, DCN between slices) runs hierarchically: level 1 on the whole array, each next level
  on the 1/n_1 piece the previous one left, so the slow network carries the least.
  Time of one level = (n - 1)/n x array / bandwidth (all-gather, reduce-scatter), twice that for
  an all-reduce; a pipeline send is array / bandwidth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from vishwamai import validate
from vishwamai.analysis.hardware import Chip

AXES = ("tensor", "fsdp", "data", "pipeline")   # innermost first
KINDS = ("all-gather", "reduce-scatter", "all-reduce", "send")


@dataclass(frozen=True)
class Mesh:
    """A device mesh: data x fsdp x tensor x pipeline per slice, times `slices` (DCN)."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1
    pipeline: int = 1
    slices: int = 1

    def __post_init__(self):
        for k in ("data", "fsdp", "tensor", "pipeline", "slices"):
            validate.positive_int(k, getattr(self, k))

    @property
    def chips(self) -> int:
        return self.data * self.fsdp * self.tensor * self.pipeline * self.slices

    @property
    def replicas(self) -> int:
        """Ways the batch is split (data x fsdp x slices)."""
        return self.data * self.fsdp * self.slices

    def __str__(self) -> str:
        parts = [f"{k} {getattr(self, k)}" for k in ("slices", "data", "fsdp", "tensor", "pipeline")
                 if getattr(self, k) > 1]
        return " x ".join(parts) or "1 chip"


@dataclass(frozen=True)
class Level:
    """One network level an axis crosses: n devices at `bandwidth` bytes/s (one direction,
    what a ring on this axis gets per chip), over `tier` ('ici', 'dcn', 'nvlink', 'ib')."""

    n: int
    bandwidth: float
    tier: str


def slice_shape(chip: Chip, chips: int) -> tuple[int, ...]:
    """Default torus shape of a TPU slice of `chips` chips: powers of two spread over the
    chip's 2 or 3 dimensions, smallest first (64 -> 4x4x4, 256 -> 4x8x8; 2D: 256 -> 16x16)."""
    validate.positive_int("chips", chips)
    if chips & (chips - 1):
        raise validate.InputError(f"chips={chips} is not accepted: a slice here is a power of two")
    k = 3 if chip.torus == "3D" else 2
    dims = [1] * k
    for i in range(int(math.log2(chips))):
        dims[i % k] *= 2
    return tuple(sorted(dims))


def _wraps(chip: Chip, shape: tuple[int, ...], d: int) -> bool:
    if chip.wrap_at is None:
        return False
    if chip.torus == "3D":
        return all(x % chip.wrap_at == 0 for x in shape)
    return d == chip.wrap_at


def axis_levels(chip: Chip, mesh: Mesh) -> dict[str, list[Level]]:
    """The network levels of every mesh axis (module docstring), e.g. for v5p 4x8x8 with
    fsdp 64 x tensor 4: tensor on one 4-long ring (2 links), fsdp on two 8-long rings."""
    out: dict[str, list[Level]] = {}
    sizes = {a: getattr(mesh, a) for a in AXES}
    if chip.vendor == "google":
        per_slice = mesh.chips // mesh.slices
        if chip.link_bw is None:
            raise validate.InputError(f"hardware={chip.name!r} has no ICI figure in HARDWARE")
        if chip.max_slice_chips and per_slice > chip.max_slice_chips:
            raise validate.InputError(f"{per_slice} chips per slice exceed {chip.name}'s largest "
                                      f"slice ({chip.max_slice_chips}): use slices=")
        shape = slice_shape(chip, per_slice)
        dims = [[d, d] for d in shape if d > 1]   # [length left, whole length]
        for a in AXES:
            need, factor = sizes[a], 0.0
            while need > 1 and dims:
                left, whole = dims[0]
                if need % left == 0:               # takes the rest of this dimension
                    factor += 2 if (left == whole and _wraps(chip, shape, whole)) else 1
                    need //= left
                    dims.pop(0)
                elif left % need == 0:             # part of a dimension: an open line
                    factor += 1
                    dims[0][0] = left // need
                    need = 1
                else:
                    raise validate.InputError(f"mesh axis {a}={sizes[a]} does not fit the "
                                              f"{'x'.join(map(str, shape))} torus")
            out[a] = [Level(sizes[a], factor * chip.link_bw, "ici")] if sizes[a] > 1 else []
        if mesh.slices > 1:
            if chip.scale_out_bw is None:
                raise validate.InputError(f"hardware={chip.name!r} has no DCN figure in HARDWARE;"
                                          " slices must be 1")
            out["slices"] = [Level(mesh.slices, chip.scale_out_bw, "dcn")]
        else:
            out["slices"] = []
        return out
    if mesh.slices > 1:
        raise validate.InputError("slices is a TPU notion: on GPUs the axes span servers")
    stride = 1
    for a in AXES:
        n = sizes[a]
        inside = max(1, min(n, chip.nvlink_domain // stride)) if stride < chip.nvlink_domain else 1
        while n % inside:
            inside -= 1
        levels = []
        if inside > 1:
            levels.append(Level(inside, chip.nvlink_bw / 2, "nvlink"))
        if n // inside > 1:
            levels.append(Level(n // inside, chip.scale_out_bw, "ib"))
        out[a] = levels
        stride *= n
    out["slices"] = []
    return out


def collective_time(kind: str, array_bytes: float, levels: list[Level]) -> tuple[float, dict]:
    """Seconds of one collective of an `array_bytes` array (the whole array the axis shares;
    for 'send' the bytes one chip sends) over `levels`, and the wire bytes per tier."""
    validate.one_of("kind", kind, KINDS)
    t, wire, a = 0.0, {}, float(array_bytes)
    for lv in levels:
        w = a if kind == "send" else (2 if kind == "all-reduce" else 1) * (lv.n - 1) / lv.n * a
        t += w / lv.bandwidth
        wire[lv.tier] = wire.get(lv.tier, 0.0) + w
        a /= lv.n
        if kind == "send":
            break
    return t, wire
