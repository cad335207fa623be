"""Step time from the TPU compiler's own cost model: its estimated cycles, read whole.

XLA:TPU writes `"estimated_cycles"` into the backend config of every instruction it schedules
(fusions, copies, converts, ...). `measure.hlo_cost.step_figures` adds them up over the compiled
HLO, each `while` body times its trip count and each called computation expanded, split into
'compute' (fusions without a collective), 'collective' (collectives and the fusions holding
one) and 'copy'. Divided by the chip's clock (`Chip.clock_hz`, the hardware table) that is the
compiler's estimate of one step's seconds on one device (a TensorCore on tpu7x, a chip
elsewhere), nothing overlapped.
"""
from __future__ import annotations

from vishwamai.analysis.hardware import Chip, get_chip


def step_seconds(step: dict, hardware: str | Chip, *, tokens_per_device: float,
                 model_flops_per_token: float | None = None,
                 devices_per_chip: int = 1) -> dict:
    """The compiler's step time for one compiled program.

    Args:
      step: `CompiledStats.step` / `measure.step_figures(...)` of the program.
      hardware: the chip (`HARDWARE` key or `Chip`); its `clock_hz` converts cycles.
      tokens_per_device: tokens one device processes per step (global tokens / devices).
      model_flops_per_token: training FLOPs per token (a named convention) for the implied
        MFU; None leaves MFU out.
      devices_per_chip: JAX devices per chip (2 on tpu7x, whose TensorCores are devices).

    Returns:
      dict: cycles {total, compute, collective, copy}, seconds {same keys}, clock_hz,
      tokens_per_s_per_chip, mfu (model FLOPs at that rate over the bf16 peak; None without
      model_flops_per_token).

    Raises:
      ValueError: the chip has no clock (not a TPU) or the program has no estimated cycles.
    """
    chip = get_chip(hardware) if isinstance(hardware, str) else hardware
    if not chip.clock_hz:
        raise ValueError(f"hardware={chip.name!r} has no clock_hz: the compiler's cycles are "
                         "read for TPUs only")
    cyc = step.get("cycles") or {}
    if not cyc.get("total"):
        raise ValueError("step has no estimated cycles (not an XLA:TPU program?)")
    seconds = {k: v / chip.clock_hz for k, v in cyc.items()}
    tok = tokens_per_device * devices_per_chip / seconds["total"]
    mfu = (tok * model_flops_per_token / chip.bf16_flops) if model_flops_per_token else None
    return {"cycles": dict(cyc), "seconds": seconds, "clock_hz": chip.clock_hz,
            "tokens_per_s_per_chip": tok, "mfu": mfu}
