"""kernels/quant_configs.py: batch buckets, the lookup order (shape, bucket
default, table), the split-K choice, and loading a tuning file like the sweep's."""

from __future__ import annotations

import json

import pytest

from swiftinfer_core.kernels import quant_configs as qc


@pytest.fixture
def defaults_only():
    qc.reset()
    yield
    qc.reset()


def test_buckets_round_up_and_cap():
    assert [qc.bucket(m) for m in (1, 2, 16, 17, 32, 33, 100, 128, 129, 256, 257, 512, 4096)] == [1, 16, 16, 32, 32, 64, 128, 128, 256, 256, 512, 512, 512]


def test_every_default_is_a_complete_config():
    for fmt, table in qc.DEFAULTS.items():
        assert sorted(table) == list(qc.BUCKETS)
        for b, cfg in table.items():
            keys = {"block_n", "block_k", "warps", "stages", "waves"} | ({"block_m"} if b > 1 else set()) | ({"dequant_mib"} if b > 256 else set())
            assert set(cfg) == keys, (fmt, b)
            assert cfg["block_k"] % (32 if fmt == "int4" else 16) == 0
            if b > 1:
                assert cfg["block_m"] >= 16 and cfg["block_k"] % (128 if fmt == "int4" else 64) == 0


def test_sweep_candidates_fit_the_kernels():
    for fmt in ("int4", "int8"):
        assert all(bk % (32 if fmt == "int4" else 16) == 0 for _, bk, _ in qc.GEMV_CANDIDATES[fmt])
        assert all(bk % (128 if fmt == "int4" else 64) == 0 for _, bk, _, _ in qc.GEMM_CANDIDATES[fmt])


def test_beyond_256_rows_int_formats_dequantise_and_fp8_keeps_the_fused_tiles(defaults_only):
    for fmt, mib in (("int4", 32), ("int8", 1024), ("int4_zp", 32)):
        assert [qc.dequant_mib(qc.config(fmt, m, 4096, 4096)) for m in (128, 256, 257, 2048)] == [0, 0, mib, mib], fmt
    fp8 = qc.config("fp8", 2048, 4096, 4096)  # int8's entry; kernels/fp8_gemm.py reads only the tile keys
    assert {k: fp8[k] for k in ("block_m", "block_n", "block_k")} == {"block_m": 128, "block_n": 128, "block_k": 64}


def test_pick_split_reaches_the_waves_without_empty_parts():
    # 128 row blocks, 43 K steps, 132 SMs, 4 waves: ceil(528 / 128) = 5 parts of ceil(43 / 5) = 9 steps
    assert qc.pick_split(128, 43, 132, 4) == (5, 9)
    assert qc.pick_split(1000, 8, 132, 4) == (1, 8)  # enough tiles already
    assert qc.pick_split(4, 3, 132, 8) == (3, 1)  # no more parts than steps
    assert qc.pick_split(128, 43, 132, 0) == (1, 43)  # waves 0: never split
    for tiles, steps, waves in [(7, 100, 4), (1, 1000, 8), (33, 17, 2)]:
        split, per = qc.pick_split(tiles, steps, 132, waves)
        assert split <= qc.MAX_SPLIT and (split - 1) * per < steps <= split * per  # every part has a step


def test_lookup_order_shape_then_bucket_default_then_table(tmp_path, defaults_only):
    assert qc.config("int4", 1, 4096, 4096) == qc.DEFAULTS["int4"][1]
    shape_cfg = dict(qc.DEFAULTS["int4"][1], block_n=64)
    bucket_cfg = dict(qc.DEFAULTS["int4"][32], waves=8)
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"configs": {"int4": {"1": {"4096x4096": shape_cfg}, "32": {"default": bucket_cfg}}}}))
    qc.load(path)
    assert qc.config("int4", 1, 4096, 4096) == shape_cfg
    assert qc.config("int4", 1, 4096, 11008) == qc.DEFAULTS["int4"][1]  # no entry for this shape or bucket
    assert qc.config("int4", 20, 4096, 4096) == bucket_cfg  # bucket 32's tuned default
    assert qc.config("int8", 20, 4096, 4096) == qc.DEFAULTS["int8"][32]
    got = qc.config("int4", 1, 4096, 4096)
    got["block_n"] = 1  # a copy: the table is not changed through it
    assert qc.config("int4", 1, 4096, 4096) == shape_cfg


def test_zero_point_int4_takes_int4s_table_until_it_has_its_own(tmp_path, defaults_only):
    """"int4_zp" (int4 with zero points) has no defaults of its own: int4's table,
    int4's tuned entries, and its own section once a tuning file has one."""
    for b in qc.BUCKETS:
        assert qc.config("int4_zp", b, 4096, 4096) == qc.DEFAULTS["int4"][b]
    int4_cfg = dict(qc.DEFAULTS["int4"][1], block_n=64)
    zp_cfg = dict(qc.DEFAULTS["int4"][1], block_n=16, waves=8)
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"configs": {"int4": {"1": {"4096x4096": int4_cfg}}}}))
    qc.load(path)
    assert qc.config("int4_zp", 1, 4096, 4096) == int4_cfg
    path.write_text(json.dumps({"configs": {"int4": {"1": {"4096x4096": int4_cfg}},
                                            "int4_zp": {"1": {"default": zp_cfg}}}}))
    qc.load(path)
    assert qc.config("int4_zp", 1, 4096, 4096) == zp_cfg  # its own bucket default before int4's shape entry
    assert qc.config("int4", 1, 4096, 4096) == int4_cfg
    with pytest.raises(KeyError):
        qc.config("int3", 1, 4096, 4096)


def test_gemv_variant_defaults_and_refusals():
    assert qc.gemv_variant(qc.DEFAULTS["int4"][1]) == (0, False)  # no keys: the plain kernel
    assert [qc.gemv_variant(v) for v in qc.GEMV_VARIANTS["int4"]] == [(1, False), (2, False), (0, True), (1, True), (1, False)]
    assert [qc.pdl(v) for v in qc.GEMV_VARIANTS["int4"]] == [False] * 4 + [True]
    for bad in ({"prefetch": 3}, {"prefetch": -1}, {"l2_only": 1}):
        with pytest.raises(ValueError, match="prefetch"):
            qc.gemv_variant(bad)
    assert not qc.pdl({}) and not qc.x_resident({}) and qc.x_resident({"x_resident": True})
    for flag in ("pdl", "x_resident"):
        with pytest.raises(ValueError, match=flag):
            getattr(qc, flag)({flag: 1})
