"""bench/quant_variants_report.py: the fastest config per GEMV variant, a later source
replacing an earlier one's shape, and one layer's sums."""

from bench.quant_variants_report import summarize, variant_rows


def _point(n, k, bf16, timings):
    rows = [{"cfg": dict(block_n=16, **cfg), "us": us} for cfg, us in timings]
    return {"n": n, "k": k, "bf16_us": bf16, "rows": sorted(rows, key=lambda r: r["us"])}


def test_fastest_per_variant_and_layer_sums():
    a = [_point(8, 8, 20.0, [({}, 12.0), ({"prefetch": 1}, 11.0)])]
    b = [_point(8, 8, 20.0, [({}, 10.0), ({}, 14.0), ({"prefetch": 1}, 13.0), ({"prefetch": 1, "l2_only": True}, 9.0)]),
         _point(16, 8, 40.0, [({}, 30.0), ({"prefetch": 2}, 25.0)])]
    rows = variant_rows(a, "a") + variant_rows(b, "b")
    assert [(r["source"], r["shape"], r["variant"], r["us"]) for r in rows] == [
        ("a", "8x8", "pf0", 12.0), ("a", "8x8", "pf1", 11.0),
        ("b", "8x8", "pf0", 10.0), ("b", "8x8", "pf1", 13.0), ("b", "8x8", "pf1+l2", 9.0),
        ("b", "16x8", "pf0", 30.0), ("b", "16x8", "pf2", 25.0)]
    cur, layer = summarize(rows, ["8x8", "16x8"])
    assert {r["source"] for r in cur} == {"b"}  # b re-timed 8x8
    assert layer["plain_us"] == 40.0 and layer["best_variant_us"] == 34.0 and layer["bf16_us"] == 60.0
    assert summarize(rows, ["8x8", "32x8"])[1] == {}  # a layer shape never timed
    h2 = variant_rows([_point(8, 8, 20.0, [({"math": "h2"}, 8.0), ({}, 10.0)])], "c")
    assert [(r["variant"], r["us"]) for r in h2] == [("h2 pf0", 8.0), ("pf0", 10.0)]  # another math is its own variant
