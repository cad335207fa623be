"""The measuring layer: the compiled-executable reader against programs of known cost, the
version quirks it absorbs, the HLO collective parser, and the timing helpers' contracts."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vishwamai.measure import (COLLECTIVE_KINDS, CompiledStats, collectives, compiled_flops,
                               compiled_memory, cost_analysis, higher_peak, is_oom, spread,
                               time_fn)


def test_matmul_of_known_cost():
    n = 128
    a = jax.ShapeDtypeStruct((n, n), jnp.float32)
    c = jax.jit(lambda x, y: x @ y).lower(a, a).compile()
    st = CompiledStats.of(c)
    assert st.flops == 2 * n**3
    assert st.argument_bytes == 2 * n * n * 4 and st.output_bytes == n * n * 4
    assert st.peak_bytes == st.argument_bytes + st.output_bytes - st.alias_bytes + st.temp_bytes
    assert compiled_flops(c) == st.flops
    assert compiled_memory(c)["peak"] == st.peak_bytes
    assert st.collectives == {}                      # not read unless asked


def test_donated_argument_is_aliased():
    x = jax.ShapeDtypeStruct((256, 256), jnp.float32)
    c = jax.jit(lambda v: v * 2.0, donate_argnums=0).lower(x).compile()
    st = CompiledStats.of(c)
    assert st.alias_bytes == 256 * 256 * 4
    assert st.peak_bytes == 256 * 256 * 4 + st.temp_bytes   # input and output share a buffer


class _Old:
    """An executable as older jaxlib releases return it: a list of dicts, no memory analysis."""

    def cost_analysis(self):
        return [{"flops": 10.0, "bytes accessed": 4.0}, {"flops": 5.0, "utilization": 1.0}]

    def memory_analysis(self):
        return None

    def as_text(self):
        return ""


def test_version_quirks():
    assert cost_analysis(_Old()) == {"flops": 15.0, "bytes accessed": 4.0, "utilization": 1.0}
    st = CompiledStats.of(_Old(), hlo=True)
    assert st.flops == 15.0 and math.isnan(st.temp_bytes) and math.isnan(st.peak_bytes)
    with pytest.raises(ValueError, match="memory_analysis"):
        st.memory()


HLO = """
  %ag = f32[8,128]{1,0} all-gather(f32[1,128]{1,0} %p), replica_groups={}, dimensions={0}
  %ar-start = (bf16[64]{0}, bf16[64]{0}) all-reduce-start(bf16[64]{0} %g), to_apply=%add
  %ar-done = bf16[64]{0} all-reduce-done((bf16[64]{0}, bf16[64]{0}) %ar-start)
  %rs = f32[16]{0} reduce-scatter(f32[128]{0} %x), dimensions={0}
  ROOT %t = (f32[8,128]{1,0}) tuple(%ag)
"""


def test_collectives_parser():
    c = collectives(HLO)
    assert set(c) == set(COLLECTIVE_KINDS)
    assert c["all-gather"] == {"count": 1, "bytes": 8 * 128 * 4}
    assert c["all-reduce"] == {"count": 1, "bytes": 2 * 64 * 2}   # the async pair once
    assert c["reduce-scatter"] == {"count": 1, "bytes": 16 * 4}
    assert c["all-to-all"]["count"] == 0


def test_time_fn_and_spread():
    f = jax.jit(lambda x: x + 1)
    t = time_fn(f, jnp.ones(4), repeats=3)
    assert len(t["times_s"]) == 3 and t["min_s"] <= t["median_s"] <= max(t["times_s"])
    s = spread([3.0, 1.0, 2.0])
    assert s["median_s"] == 2.0 and s["min_s"] == 1.0 and s["p10_s"] == pytest.approx(1.2)
    with pytest.raises(ValueError, match="repeats"):
        time_fn(f, jnp.ones(4), repeats=0)


def test_higher_peak_and_oom():
    p, src = higher_peak((2e11, "measured"), (3e11, "measured"))
    assert p == 3e11 and "200.0 (before)" in src and "300.0 (after)" in src
    assert is_oom(MemoryError()) and is_oom(RuntimeError("RESOURCE_EXHAUSTED: x"))
    assert not is_oom(ValueError("shape"))
    np.testing.assert_equal(higher_peak((5.0, "a"), (1.0, "b"))[0], 5.0)


REPORT = """Memory Space: default (color=0)
Total bytes: 17033033536 (15.86GiB)
  cumulative_size;       size;       offset; used_by_n_values; shapes_list
  ------------------------------------------------------------
    1.34GiB( 16%);    1.34GiB;   1359429632;                1; bf16[32,1024,2,11008]
    2.69GiB( 33%);    1.34GiB;   4023861248;                5; 5×bf16[32,1024,2,11008]
    4.35GiB( 53%);  500.00MiB;   3245490176;                1; f32[4096,32000]
    4.36GiB( 53%);   16.00KiB;         1024;                2; f32[2048], s32[2048]
  The rest 185 values are less than 5% of the total size and not shown.

  cumulative_size;       size;       offset; used_by_n_values; shapes_list
  ------------------------------------------------------------
    1.34GiB(100%);    1.34GiB;            0;                2; 2×bf16[32,1024,2,11008]
"""


def test_memory_report_reads_the_first_memory_space():
    from vishwamai.measure.buffers import parse_memory_report
    r = parse_memory_report(REPORT, top=3)
    assert r["total_bytes"] == 17033033536
    assert [b["values"] for b in r["buffers"]] == [1, 5, 1]     # top=3 of the first table
    assert r["buffers"][2] == {"bytes": 500 * 2**20, "offset": 3245490176, "values": 1,
                               "shapes": "f32[4096,32000]"}
    assert parse_memory_report(REPORT, top=10)["buffers"][-1]["bytes"] == 16 * 2**10
    with pytest.raises(ValueError, match="Total bytes"):
        parse_memory_report("HloModule jit_step\n")
