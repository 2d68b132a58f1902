"""bench/quant_xres_ab.py: its candidates (the table's config, that config with prefetch 1,
every x-resident one), which kernel and math a config runs, and the fastest row of each."""

from bench.quant_xres_ab import KINDS, best, candidates, kind  # first: it puts bench/ on the path
from quant_sweep import variant

from swiftinfer_core.kernels import quant_configs as qc


def test_candidates_and_kinds():
    c = candidates(12288, 4096)
    assert c[0] == qc.config("int4", 1, 12288, 4096) and c[1] == dict(c[0], prefetch=1, stages=1)
    xres = c[2:]
    assert len(xres) == len(qc.GEMV_XRES["int4"]) * len(qc.XRES_MATHS) * 2 * len(qc.XRES_WAVES)
    assert all(qc.x_resident(x) for x in xres) and [kind(x) for x in c[:2]] == ["default", "default"]
    assert {kind(x) for x in xres} == {"xres f32", "xres h2"}
    assert variant(xres[0]) == "xres pf0" and variant(dict(xres[0], math="h2", prefetch=1)) == "h2 xres pf1"


def test_best_of_kinds():
    rows = [{"cfg": dict(block_n=16, x_resident=True, math="h2"), "us": 5.0},
            {"cfg": dict(block_n=16), "us": 7.0},
            {"cfg": dict(block_n=16, x_resident=True), "us": 8.0}]
    p = {"rows": rows}
    assert best(p, ("default",))["us"] == 7.0 and best(p, ("xres f32",))["us"] == 8.0
    assert best(p, KINDS)["us"] == 5.0 and best(p, KINDS[1:])["us"] == 5.0
    assert best({"rows": rows[1:2]}, ("xres h2",)) is None
