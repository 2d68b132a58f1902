"""bench/quant_xres_ab.py: its candidates (the table's config, that config with prefetch 1,
every x-resident one), which kernel and math a config runs, and the fastest row of each."""

from bench.quant_xres_ab import KINDS, best, candidates, kind  # first: it puts bench/ on the path
from quant_sweep import variant

from swiftinfer_core.kernels import quant_configs as qc


def test_candidates_and_kinds():
    c = candidates(12288, 4096)
    base = qc.config("int4", 1, 12288, 4096)
    assert c[:4] == [base, dict(base, pdl=True), dict(base, prefetch=1, stages=1), dict(base, prefetch=1, stages=1, pdl=True)]
    assert [kind(x) for x in c[:4]] == ["default", "default pdl", "default", "default pdl"]
    xres = c[4:]
    assert len(xres) == 4 * len(qc.XRES_MATHS) * 2 * 2 and all(qc.x_resident(x) for x in xres)
    assert {kind(x) for x in xres} == {"xres f32", "xres h2", "xres f32 pdl", "xres h2 pdl"}
    assert variant(xres[0]) == "xres pf1" and variant(xres[1]) == "xres pf1+pdl"
    assert variant(dict(xres[0], math="h2")) == "h2 xres pf1"


def test_best_of_kinds():
    rows = [{"cfg": dict(block_n=16, x_resident=True, math="h2"), "us": 5.0},
            {"cfg": dict(block_n=16), "us": 7.0},
            {"cfg": dict(block_n=16, x_resident=True), "us": 8.0}]
    p = {"rows": rows}
    assert best(p, ("default",))["us"] == 7.0 and best(p, ("xres f32",))["us"] == 8.0
    assert best(p, KINDS)["us"] == 5.0 and best(p, KINDS[1:])["us"] == 5.0
    assert best({"rows": rows[1:2]}, ("xres h2",)) is None
