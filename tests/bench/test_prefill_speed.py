"""bench/prefill_speed.py: its CPU smoke run writes every field and row; its FLOP
count matches the model it times."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.models import model_args
from bench.prefill_speed import matmul_params, prefill_flops, visible_keys
from swiftinfer_core.cache.layout import StreamLayout

ROOT = Path(__file__).resolve().parents[2]
ROW_FIELDS = {"shape", "cache", "cached", "chunk", "chunk_exceeds_window", "wall_ms", "tok_s", "flops_matmul",
              "flops_attention", "flops", "tflops", "frac_bf16_peak", "weight_read_ms", "weight_read_ms_copy_bw",
              "wall_over_weight_read", "attn_ms", "attn_share"}


def test_cpu_smoke_writes_a_row_per_chunk_and_cache_fill(tmp_path):
    chunks = [32, 64]  # 64 > the window: a chunk that drops its own early tokens
    cmd = [sys.executable, "bench/prefill_speed.py", "--shapes", "smollm2-135m", "--chunks", *map(str, chunks),
           "--windows", "60", "--layers", "2", "--device", "cpu", "--reps", "1", "--warmup", "0", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    d = json.loads((tmp_path / "prefill_speed.json").read_text())
    assert (tmp_path / "prefill_speed.png").stat().st_size > 0
    for key in ("date", "command", "device", "versions", "flops_formula", "peaks", "timing", "shapes", "rows"):
        assert key in d, key
    assert d["device"]["name"] == "cpu" and d["peaks"]["bf16_dense_flops"] is None
    assert d["shapes"]["smollm2-135m"]["weight_bytes"] > 0
    rows = d["rows"]
    # cached 0 and "full" = window - 20 = 40, each with every chunk
    assert sorted((r["cached"], r["chunk"]) for r in rows) == [(c, t) for c in (0, 40) for t in chunks]
    for r in rows:
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
        assert r["tok_s"] > 0 and r["wall_ms"] > 0 and r["attn_ms"] > 0 and r["flops"] > 0
        assert r["frac_bf16_peak"] is None and r["weight_read_ms"] is None  # no peak table entry for a CPU
        assert r["chunk_exceeds_window"] == (r["chunk"] > 60)


def test_bad_arguments_are_usage_errors():
    proc = subprocess.run([sys.executable, "bench/prefill_speed.py", "--chunks", "0", "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--chunks" in proc.stderr


@pytest.mark.parametrize("sinks,window", [(4, 60), (4, 1020), (0, 8)])
def test_visible_keys_counts_what_each_query_sees(sinks, window):
    lay = StreamLayout(sinks, window)
    for cached in (0, 1, 5, 40, lay.capacity - 1, lay.capacity, 3000):
        for chunk in (1, 32, 64, 2048):
            # query t sees u <= t with u < sinks or u > t - window (layout.py)
            want = sum(sum(1 for u in range(t + 1) if u < sinks or u > t - window) for t in range(cached, cached + chunk)) \
                if chunk <= 64 else sum(min(t + 1, lay.capacity) for t in range(cached, cached + chunk))
            assert visible_keys(lay, cached, chunk) == want, (cached, chunk)


@pytest.mark.parametrize("shape", ["llama2-7b", "llama3.1-8b", "smollm2-135m"])
def test_matmul_params_are_the_models_projection_weights(shape):
    from swiftinfer_core.model.llama import Llama

    args = model_args(shape)
    with torch.device("meta"):
        m = Llama(args)
    want = sum(w.numel() for L in m.layers for w in (L.wqkv.weight, L.wo.weight, L.w13.weight, L.w2.weight))
    assert matmul_params(args) == want
    fl = prefill_flops(args, StreamLayout(4, 1020), 0, 128)
    assert fl["flops_matmul"] == 2 * 128 * want + 2 * args.vocab_size * args.hidden_size
    assert fl["flops"] == fl["flops_matmul"] + fl["flops_attention"]
