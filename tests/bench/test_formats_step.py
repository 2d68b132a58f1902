"""bench/formats_step.py's bookkeeping on the CPU: which batches a (weights, KV) pair runs,
the bytes each weight format holds (against model/quant.weight_bytes, layer by layer), and
the ratios against bf16 weights with a bf16 cache."""

import pytest
import torch

from bench.formats_step import FORMATS, batches_for, build, summarize, weight_bytes
from swiftinfer_core.model.args import ModelArgs
from swiftinfer_core.model.linear_slots import linear_slots
from swiftinfer_core.model.quant import weight_bytes as format_bytes


def tiny(tied: bool) -> ModelArgs:
    return ModelArgs(vocab_size=320, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                     intermediate_size=256, rope_theta=10000.0, tie_embeddings=tied, max_position=512, name="tiny")


def test_batches_for_adds_both_fits_and_drops_what_does_not_fit():
    assert batches_for([1, 32, 128], fit_kv=110, fit_bf16=110) == [1, 32, 110]
    assert batches_for([1, 32, 128], fit_kv=230, fit_bf16=110) == [1, 32, 110, 128, 230]
    assert batches_for([1, 32, 128], fit_kv=20, fit_bf16=20) == [1, 20]
    assert batches_for([1], fit_kv=0, fit_bf16=0) == [1]


# int8's and int4's QuantLinear hold CUDA's layout on a GPU only (the CPU's: model/cpu_weights.py, torch's int4 pack)
@pytest.mark.parametrize("fname", ["bf16", "fp8", "fp8-down2", pytest.param("int8", marks=pytest.mark.gpu), pytest.param("int4", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("tied", [False, True])
def test_weight_bytes_are_each_formats_own(fname, tied):
    torch.manual_seed(0)
    args, dev = tiny(tied), torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dims = [(s.linear.out_features, s.linear.in_features) for s in linear_slots(build(args, None, dev), head=True)]
    model = build(args, FORMATS[fname][0], dev, FORMATS[fname][1])
    h, L = args.hidden_size, args.num_layers
    norms = (2 * L + 1) * h * 2  # bf16 RMSNorm weights, two per layer and the final one
    want = sum(format_bytes(FORMATS[fname][0], n, k) for n, k in dims) + norms
    assert weight_bytes(model) == want
    terms = {name.rsplit(".", 1)[-1]: mod.act_terms for name, mod in model.named_modules() if hasattr(mod, "act_terms")}
    assert terms == ({"wqkv": 1, "wo": 1, "w13": 1, "w2": FORMATS[fname][1], "lm_head": 1} if fname.startswith("fp8") else {})


def test_summarize_divides_by_bf16_weights_and_cache_at_the_same_batch():
    def row(w, kv, B, tok_s, fit):
        return dict(shape="s", weights=w, kv=kv, B=B, tok_s=tok_s, itl_p50_ms=1e3 * B / tok_s, slots_fit=fit)

    rows = [row("bf16", "bf16", 1, 200.0, 100), row("bf16", "bf16", 100, 5000.0, 100),
            row("int4", "fp8", 1, 450.0, 210), row("int4", "fp8", 100, 7000.0, 210), row("int4", "fp8", 210, 9000.0, 210)]
    s = {(r["weights"], r["kv"], r["B"]): r for r in summarize(rows)}
    assert s[("int4", "fp8", 1)]["x_bf16"] == pytest.approx(2.25)
    assert s[("int4", "fp8", 100)]["x_bf16"] == pytest.approx(1.4)
    assert s[("int4", "fp8", 210)]["x_bf16"] is None  # bf16 never ran 210 conversations
    assert s[("int4", "fp8", 210)]["fit_x_bf16"] == pytest.approx(2.1)
    assert s[("bf16", "bf16", 1)]["x_bf16"] == 1.0


def test_summarize_takes_the_same_batch1_chain_where_both_ran_else_bf16_as_the_engine_ran_it():
    def row(w, B, tok_s, chain):
        return dict(shape="s", weights=w, kv="bf16", B=B, tok_s=tok_s, itl_p50_ms=1e3 * B / tok_s, slots_fit=10,
                    gemv_chain=chain)

    rows = [row("bf16", 1, 240.0, True), row("bf16", 1, 200.0, False),  # --chain both
            row("fp8", 1, 300.0, True), row("fp8", 1, 330.0, False)]
    s = {(r["weights"], r["gemv_chain"]): r["x_bf16"] for r in summarize(rows)}
    assert s[("fp8", True)] == pytest.approx(1.25) and s[("fp8", False)] == pytest.approx(1.65)
    engine = [row("bf16", 1, 240.0, True), row("fp8", 1, 330.0, False)]  # --chain engine: quantized rows unfused
    assert summarize(engine)[1]["x_bf16"] == pytest.approx(330 / 240)
