"""bench/quant_xres_ab.py: its candidates (the table's config, that config with prefetch 1,
every x-resident one), which kernel and math a config runs, and the fastest row of each."""

from bench.quant_xres_ab import KINDS, best, candidates, kind  # first: it puts bench/ on the path
from quant_sweep import variant

from swiftinfer_core.kernels import quant_configs as qc


def test_candidates_and_kinds():
    c = candidates(12288, 4096)
    base = qc.config("int4", 1, 12288, 4096)
    pf1 = dict(base, prefetch=1, stages=1)
    assert c[:6] == [base, dict(base, pdl=True), dict(base, pdl=True, l2_prefetch=True),
                     pf1, dict(pf1, pdl=True), dict(pf1, pdl=True, l2_prefetch=True)]
    assert [kind(x) for x in c[:3]] == ["default", "default pdl", "default pdl l2pf"]
    xres = c[6:]
    assert len(xres) == 3 * 2 * 3 and all(qc.x_resident(x) for x in xres)
    assert {kind(x) for x in xres} == {"xres h2", "xres h2 pdl", "xres h2 pdl l2pf"} == set(KINDS[3:])
    assert variant(xres[0]) == "h2 xres pf1" and variant(xres[1]) == "h2 xres pf1+pdl"
    assert kind(dict(xres[0], math="f32")) == "xres f32"


def test_best_of_kinds():
    rows = [{"cfg": dict(block_n=16, x_resident=True, math="h2"), "us": 5.0},
            {"cfg": dict(block_n=16, pdl=True), "us": 6.0},
            {"cfg": dict(block_n=16), "us": 7.0},
            {"cfg": dict(block_n=16, x_resident=True), "us": 8.0}]
    p = {"rows": rows}
    assert best(p, ("default",))["us"] == 7.0 and best(p, ("xres f32",))["us"] == 8.0
    assert best(p, KINDS)["us"] == 5.0 and best(p, ("default", "default pdl"))["us"] == 6.0
    assert best({"rows": rows[2:3]}, ("xres h2",)) is None
