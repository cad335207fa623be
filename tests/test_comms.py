"""Communication and pipeline formulas against closed forms and a brute-force schedule."""
import math

import pytest

from vishwamai.analysis import comms
from vishwamai.analysis.params import count_params
from vishwamai.config import get_preset

REL = 1e-12  # closed forms: exact up to float rounding


def test_ring_wire_bytes_closed_forms():
    assert comms.ring_wire_bytes("all-gather", 800, 8) == pytest.approx(700, rel=REL)
    assert comms.ring_wire_bytes("reduce-scatter", 800, 8) == pytest.approx(700, rel=REL)
    assert comms.ring_wire_bytes("all-reduce", 800, 8) == pytest.approx(1400, rel=REL)
    assert comms.ring_wire_bytes("all-reduce", 800, 1) == 0
    with pytest.raises(ValueError, match="kind"):
        comms.ring_wire_bytes("broadcast", 1, 2)
    with pytest.raises(ValueError, match="n must"):
        comms.ring_wire_bytes("all-gather", 1, 0)


def test_zero_layouts_move_what_the_zero_paper_says():
    cfg = get_preset("llama3_8b")
    n, P = 64, count_params(cfg)["total"] * 4
    data = comms.collective_bytes(cfg, "data", n=n, batch=n, seq_len=4096)
    z1 = comms.collective_bytes(cfg, "zero1", n=n, batch=n, seq_len=4096)
    z3 = comms.collective_bytes(cfg, "fsdp", n=n, batch=n, seq_len=4096)
    f = (n - 1) / n
    assert data["wire"] == pytest.approx(2 * f * P, rel=REL)           # 2 x params
    assert z1["wire"] == pytest.approx(data["wire"], rel=REL)          # ZeRO-1/2: same volume
    # ZeRO-3: 3 x params (gather fwd + bwd, reduce-scatter), less the table, plus activations
    assert 1.3 * data["wire"] < z3["wire"] < 1.5 * data["wire"]
    assert z1["collectives"]["reduce-scatter"]["bytes"] == pytest.approx(P / n, rel=REL)
    mem = {k: comms.zero_memory(cfg, k, n=n) for k in ("data", "zero1", "zero2", "fsdp")}
    assert mem["zero1"]["optimizer"] == pytest.approx(mem["data"]["optimizer"] / n, rel=REL)
    assert mem["zero1"]["grads"] == mem["data"]["grads"]
    assert mem["zero2"]["grads"] == pytest.approx(mem["data"]["grads"] / n, rel=REL)
    assert mem["fsdp"]["total"] == pytest.approx(mem["data"]["total"] / n, rel=REL)


def test_tensor_parallel_bytes_scale_with_tokens_not_parameters():
    cfg = get_preset("small")
    a = comms.collective_bytes(cfg, "tensor", n=4, batch=2, seq_len=128)
    b = comms.collective_bytes(cfg, "tensor", n=4, batch=4, seq_len=128)
    assert b["wire"] == pytest.approx(2 * a["wire"], rel=REL)
    act = 2 * 128 * cfg.hidden_dim * 4
    assert a["collectives"]["all-reduce"]["bytes"] == pytest.approx(
        act * (4 * cfg.num_layers + 2) + 3 * 2 * 128 * 4, rel=REL)


def test_comm_time_and_critical_batch():
    t = comms.comm_time("llama3_8b", "data", "h100", n=8, batch=8, seq_len=8192)
    assert t["bandwidth"] == pytest.approx(450e9, rel=REL)             # 900 GB/s both ways
    assert t["comm_s"] == pytest.approx(t["wire_bytes"] / 450e9, rel=REL)
    b = comms.critical_batch("llama3_8b", "data", "h100", n=8, seq_len=8192)
    at = comms.comm_time("llama3_8b", "data", "h100", n=8, batch=math.ceil(b) + 8,
                         seq_len=8192)
    below = comms.comm_time("llama3_8b", "data", "h100", n=8, batch=max(1, math.floor(b) - 1),
                            seq_len=8192)
    assert at["bound"] == "compute" and below["bound"] == "communication"
    dcn = comms.link_bandwidth("v5e", "dcn")
    assert dcn == pytest.approx(25e9 / 8, rel=REL)
    with pytest.raises(ValueError, match="DCN"):
        comms.link_bandwidth("v6e", "dcn")
    with pytest.raises(ValueError, match="layout"):
        comms.collective_bytes("tiny", "pipeline", n=2, batch=2, seq_len=8)


# ---- brute-force pipeline schedules -------------------------------------------------------

def _orders(p, m, schedule):
    """Per-stage op order: ('F', j) / ('B', j)."""
    orders = []
    for s in range(p):
        if schedule == "gpipe":
            ops = [("F", j) for j in range(m)] + [("B", j) for j in range(m)]
        else:
            warm = min(p - s - 1, m)
            ops = [("F", j) for j in range(warm)]
            f, b = warm, 0
            while b < m:
                if f < m:
                    ops.append(("F", f))
                    f += 1
                ops.append(("B", b))
                b += 1
        orders.append(ops)
    return orders


def _simulate(p, m, schedule, tf=1, tb=2):
    """Time-step simulation: each stage runs its next op once its inputs are ready."""
    orders = _orders(p, m, schedule)
    done = {}
    pos, busy_until, t = [0] * p, [0] * p, 0
    running = [None] * p
    live, peak, busy = [0] * p, [0] * p, [0] * p
    while any(pos[s] < len(orders[s]) for s in range(p)) or any(running):
        for s in range(p):
            if running[s] and busy_until[s] == t:
                kind, j = running[s]
                done[(kind, s, j)] = t
                if kind == "B":
                    live[s] -= 1
                running[s] = None
        for s in range(p):
            if running[s] or pos[s] >= len(orders[s]):
                continue
            kind, j = orders[s][pos[s]]
            if kind == "F":
                ready = s == 0 or ("F", s - 1, j) in done
            else:
                ready = ("F", s, j) in done and (s == p - 1 or ("B", s + 1, j) in done)
            if ready:
                running[s] = (kind, j)
                dur = tf if kind == "F" else tb
                busy_until[s] = t + dur
                busy[s] += dur
                pos[s] += 1
                if kind == "F":
                    live[s] += 1
                    peak[s] = max(peak[s], live[s])
        t += 1
    makespan = max(done.values())
    idle = sum(makespan - b for b in busy)
    return idle / (p * makespan), peak


@pytest.mark.parametrize("schedule", comms.SCHEDULES)
@pytest.mark.parametrize("p,m", [(2, 1), (4, 4), (4, 8), (3, 7), (8, 16)])
def test_pipeline_formulas_match_a_simulated_schedule(schedule, p, m):
    bubble, peak = _simulate(p, m, schedule)
    assert bubble == pytest.approx(comms.pipeline_bubble(p, m, schedule), rel=1e-9)
    assert peak == [comms.in_flight(p, m, s, schedule) for s in range(p)]


def test_pipeline_memory_and_errors():
    cfg = get_preset("llama3_8b")
    g = comms.pipeline_memory(cfg, stages=4, microbatches=16, micro_batch=1, seq_len=4096,
                              schedule="gpipe")
    f = comms.pipeline_memory(cfg, stages=4, microbatches=16, micro_batch=1, seq_len=4096)
    assert g["in_flight"] == 16 and f["in_flight"] == 4
    assert g["activations"] == pytest.approx(4 * f["activations"], rel=REL)
    with pytest.raises(ValueError, match="schedule"):
        comms.pipeline_bubble(4, 8, "zero-bubble")
    with pytest.raises(ValueError, match="divide"):
        comms.pipeline_memory(cfg, stages=5, microbatches=8, micro_batch=1, seq_len=128)
    cp = comms.context_parallel(cfg, cp=4, batch=1, seq_len=8192)
    assert cp["wire"] == pytest.approx(3 * cfg.num_layers * cp["kv_bytes_per_layer"] * 0.75,
                                       rel=REL)
