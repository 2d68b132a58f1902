"""int4 / FP8 / int8 weight quality on the real default model, EMULATED on the CPU:
StreamingLLM perplexity over the plays against float32, for several ways of
choosing the quantized values in the SAME storage formats (model/quant.py,
model/fp8.py; the choices: model/quant_search.py).

Every decoder linear's weight is quantized as the variant says and dequantized to
float32 in place; the model then runs in float32 through the engine's own cache
and attention (eval/ppl.py, mode streaming, chunked prefill), as
bench/fp8_quality_cpu.py does. The LM head (tied to the embedding) stays float32.
Calibration (activation statistics for the "aw" clip search and GPTQ): the input
Hessians X^T X of every linear (model/calibrate.py) over ``--calib-tokens`` tokens
taken from the middle of the plays, disjoint from the evaluated text, which starts
at the first play's "ACT", the first ``--calib-skip`` (sink) tokens left out. "fp8 ... act e4m3" also rounds each activation row to
e4m3 over its own scale before every product (the _scaled_mm path's numbers); "per N channels", each
group of N channels of a row over its own scale.

The "zero point" variants are int4's asymmetric format (EngineConfig.quant_zero_point:
float16 scale and min per group, min/max round to nearest; no calibration, so a run
of round-to-nearest variants only skips the Hessians). The default model's float32
weights are its GGUF's Q4_1 blocks dequantised, so "int4 g32 zero point" measures
how exactly that format gives them back (each row records the share of weights
changed and the largest change), not int4's cost on a float-trained checkpoint.

    python bench/quant_quality_cpu.py --tokens 3000 --windows 256 \
        --json bench/results/quant_quality_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import header, save_plot  # noqa: E402
from bench.shakespeare import build_corpus  # noqa: E402
from swiftinfer_core.config import EngineConfig  # noqa: E402
from swiftinfer_core.engine.engine_model import build_engine_model  # noqa: E402
from swiftinfer_core.eval.ppl import EvalPlan, Mode, evaluate  # noqa: E402
from swiftinfer_core.model.calibrate import collect_hessians, linear_targets, self_generated  # noqa: E402
from swiftinfer_core.model.fetch import models_home  # noqa: E402
from swiftinfer_core.model.fp8 import dequantize_fp8, quantize_fp8  # noqa: E402
from swiftinfer_core.model.quant import QuantFormat, QuantizedWeight, dequantize, quantize  # noqa: E402
from swiftinfer_core.model.quant_search import awq_scales, gptq_fp8, gptq_int4, int4_search_scales  # noqa: E402
from swiftinfer_core.runner.calibration import smoothing  # noqa: E402
from swiftinfer_core.runner.layerwise import Call, round_layerwise, text_calls  # noqa: E402
from swiftinfer_core.runner.model_runner import ModelRunner  # noqa: E402


def _deq_int4(p, s, n, k, group) -> torch.Tensor:
    return dequantize(QuantizedWeight(QuantFormat.INT4, p, s, n, k, group))


def rtn(fmt: QuantFormat, group: int = 128, zero_point: bool = False):
    """Round to nearest at load, as the engine does (``zero_point``: int4's asymmetric
    variant, min/max per group with float16 scale and min). Needs no calibration."""
    fn = lambda w, h, name: dequantize(quantize(w, fmt, group, zero_point))  # noqa: E731
    fn.calibrated = False
    return fn


def search(group: int, aware: bool, qmin: int = -7):
    return lambda w, h, name: _deq_int4(*int4_search_scales(w, group, torch.diag(h) if aware else None, qmin), *w.shape, group)


def gptq4(group: int, srch: bool, qmin: int = -7, act_order: bool = False):
    return lambda w, h, name: _deq_int4(*gptq_int4(w, h, group, qmin, srch, act_order=act_order), *w.shape, group)


FOLDABLE = ("wqkv", "w13", "w2")  # input scales fold into attn_norm, mlp_norm and w13's up rows; wo's would need v rows tied per KV head


def awq(inner):
    """``inner`` (fn(w, h, name)) on W diag(s) with H's inputs scaled by 1 / s (AWQ's input-channel
    scales, model/quant_search.awq_scales), dequantized and scaled back: the weights a model
    with 1 / s folded into the op before each foldable layer multiplies by (``wo`` as ``inner``)."""
    def fn(w, h, name):
        if not name.endswith(FOLDABLE):
            return inner(w, h, name)
        s = awq_scales(w, h, 128)
        hs = h / (s.double()[:, None] * s.double()[None, :])
        return inner(w.float() * s, hs, name) / s
    return fn


def sequential(fn):
    """``fn`` calibrated layer by layer, each layer on the outputs of the layers already
    rounded (runner/layerwise.py, sequential), instead of all on the float model's."""
    seq = lambda w, h, name: fn(w, h, name)  # noqa: E731
    seq.sequential = True
    return seq


def smoothed(fn, alpha: float):
    """``fn`` on the model smoothed first, layer by layer as the engine's quant_smoothing does
    (runner/calibration.smoothing, model/smooth.py: each layer's scales folded in from its
    inputs' amaxes, its Hessians rescaled), calibrated on the float layers' outputs."""
    sm = lambda w, h, name: fn(w, h, name)  # noqa: E731
    sm.smooth = alpha
    return sm


def fp8_gptq(w, h, name, damp: float = 0.01):
    return dequantize_fp8(*gptq_fp8(w, h, damp=damp))


def with_int8(base, names: tuple[str, ...]):
    """``base`` everywhere except the layers whose name ends with one of ``names``: int8 per row."""
    int8 = rtn(QuantFormat.INT8)
    return lambda w, h, name: (int8 if name.endswith(names) else base)(w, h, name)


FIRST_LAST_W2 = ("layers.0.w2", "layers.29.w2")
VARIANTS = {  # name -> (fn(w, h, name) -> dequantized weight, activations to e4m3: True (a scale per row), an int
    # (a scale per that many channels of a row), "two terms" (_e4m3_two_terms), "two terms on A,B" (two terms on the
    # layers whose names end so, one elsewhere), False, or the layer-name ends left out)
    "int8 per row (RTN)": (rtn(QuantFormat.INT8), False),
    "int4 g128 RTN (current)": (rtn(QuantFormat.INT4, 128), False),
    "int4 g128 clip search (MSE)": (search(128, False), False),
    "int4 g128 clip search (act-weighted)": (search(128, True), False),
    "int4 g128 clip search (act-weighted), -8 used": (search(128, True, -8), False),
    "int4 g128 GPTQ": (gptq4(128, False), False),
    "int4 g128 GPTQ + clip search": (gptq4(128, True), False),
    "int4 g128 GPTQ + clip search, -8 used": (gptq4(128, True, -8), False),
    "int4 g128 GPTQ + search, -8, w2 of layers 0/29 int8": (with_int8(gptq4(128, True, -8), FIRST_LAST_W2), False),
    "int4 g128 GPTQ act-order + search, -8 used": (gptq4(128, True, -8, act_order=True), False),
    "int4 g128 GPTQ act-order + search, -8 used, sequential": (sequential(gptq4(128, True, -8, act_order=True)), False),
    "int4 g128 AWQ scales, RTN": (awq(lambda w, h, name: rtn(QuantFormat.INT4, 128)(w, h, name)), False),
    "int4 g128 AWQ scales + GPTQ act-order + search, -8 used": (awq(gptq4(128, True, -8, act_order=True)), False),
    "int4 g32 RTN": (rtn(QuantFormat.INT4, 32), False),
    "int4 g32 zero point (min/max, f16 scale+min)": (rtn(QuantFormat.INT4, 32, zero_point=True), False),
    "int4 g128 zero point (min/max, f16 scale+min)": (rtn(QuantFormat.INT4, 128, zero_point=True), False),
    "int4 g32 clip search (act-weighted), -8 used": (search(32, True, -8), False),
    "int4 g32 search, -8, w2 of layers 0/29 int8": (with_int8(search(32, True, -8), FIRST_LAST_W2), False),
    "int4 g32 search, -8, every w2 int8": (with_int8(search(32, True, -8), ("w2",)), False),
    "int4 g32 GPTQ + clip search, -8 used": (gptq4(32, True, -8), False),
    "int4 g32 GPTQ act-order + search, -8 used": (gptq4(32, True, -8, act_order=True), False),
    "int4 g32 GPTQ act-order + search, -8 used, sequential": (sequential(gptq4(32, True, -8, act_order=True)), False),
    "fp8 RTN (current)": (rtn(QuantFormat.FP8), False),
    "fp8 GPTQ": (fp8_gptq, False),
    "fp8 GPTQ, sequential": (sequential(fp8_gptq), False),
    "fp8 GPTQ damp 0.1": (lambda w, h, name: fp8_gptq(w, h, name, damp=0.1), False),
    "fp8 GPTQ damp 1": (lambda w, h, name: fp8_gptq(w, h, name, damp=1.0), False),
    "fp8 RTN, act e4m3": (rtn(QuantFormat.FP8), True),
    "fp8 GPTQ, act e4m3": (fp8_gptq, True),
    "fp8 GPTQ, act e4m3, sequential": (sequential(fp8_gptq), True),
    "fp8 GPTQ, act e4m3 except w2's input": (fp8_gptq, ("w2",)),
    "fp8 GPTQ, smoothed 0.5": (smoothed(fp8_gptq, 0.5), False),
    "fp8 GPTQ, smoothed 0.5, act e4m3": (smoothed(fp8_gptq, 0.5), True),
    "fp8 GPTQ, smoothed 0.35, act e4m3": (smoothed(fp8_gptq, 0.35), True),
    "fp8 GPTQ, smoothed 0.65, act e4m3": (smoothed(fp8_gptq, 0.65), True),
    "fp8 RTN, smoothed 0.5, act e4m3": (smoothed(lambda w, h, name: rtn(QuantFormat.FP8)(w, h, name), 0.5), True),
    "fp8 RTN, act e4m3 per 64 channels": (rtn(QuantFormat.FP8), 64),
    "fp8 GPTQ, act e4m3 per 64 channels": (fp8_gptq, 64),
    "fp8 GPTQ, act e4m3 per 32 channels": (fp8_gptq, 32),
    "fp8 GPTQ, act e4m3 two terms": (fp8_gptq, "two terms"),
    "fp8 RTN, act e4m3 two terms": (rtn(QuantFormat.FP8), "two terms"),
    "fp8 GPTQ, act e4m3, w2's input two terms": (fp8_gptq, "two terms on w2"),
    "fp8 RTN, act e4m3, w2's input two terms": (rtn(QuantFormat.FP8), "two terms on w2"),
}


def _e4m3_rows(_mod, args):
    x = args[0]
    return (dequantize_fp8(*quantize_fp8(x.reshape(-1, x.shape[-1]))).view(x.shape).to(x.dtype),)


def _e4m3_groups(group: int):
    """Each activation row rounded to e4m3 in groups of ``group`` channels, a scale per group
    (fine-grained activation scales, as DeepSeek-V3's 1x128 tiles)."""
    def hook(_mod, args):
        x = args[0]
        g = x.reshape(-1, group)  # [rows * K / group, group]
        return (dequantize_fp8(*quantize_fp8(g)).view(x.shape).to(x.dtype),)
    return hook


def _e4m3_two_terms(_mod, args):
    """x ~ hi + lo, each rounded to e4m3 per row over its own scale (lo: what hi missed), so that two
    e4m3 products (or one over the rows stacked) give x's product to ~2^-8 of x instead of e4m3's 2^-4."""
    x = args[0]
    x2 = x.reshape(-1, x.shape[-1]).float()
    hi = dequantize_fp8(*quantize_fp8(x2))
    lo = dequantize_fp8(*quantize_fp8(x2 - hi))
    return ((hi + lo).view(x.shape).to(x.dtype),)


def layerwise(runner, calls: list[Call], fn) -> dict[str, torch.Tensor]:
    """Qualified name -> ``fn``'s dequantized weight, calibrated layer by layer: sequentially
    (``sequential``), or on the float layers' outputs after smoothing each (``smoothed``),
    which leaves the model smoothed."""
    out = {}
    alpha = getattr(fn, "smooth", None)

    def round_linear(name, linear, h):
        out[name] = fn(linear.weight.detach(), h, name)
        return out[name]
    round_layerwise(runner, calls, round_linear, sequential=getattr(fn, "sequential", False),
                    before_round=smoothing(runner.model, alpha) if alpha is not None else None)
    return out


def apply(model, fn, hs: dict, originals: dict, act: bool | int | str | tuple[str, ...], rounded: dict | None = None) -> tuple[list, dict]:
    """Install ``fn``'s dequantized weights (or those given in ``rounded``) -> (activation
    hooks, how far the weights moved: the share of weights changed and the largest change
    over all layers)."""
    hooks, changed, total, most = [], 0, 0, 0.0
    for name, lin in linear_targets(model).items():
        w = originals[name]
        deq = (rounded[name] if rounded is not None else fn(w, hs[name], name)).to(w.dtype)
        diff = (deq - w).abs()
        changed, total, most = changed + int((diff > 0).sum()), total + w.numel(), max(most, float(diff.max()))
        lin.weight.data = deq.contiguous()
        if act == "two terms":
            hooks.append(lin.register_forward_pre_hook(_e4m3_two_terms))
        elif isinstance(act, str) and act.startswith("two terms on "):
            ends = tuple(act.removeprefix("two terms on ").split(","))
            hooks.append(lin.register_forward_pre_hook(_e4m3_two_terms if name.endswith(ends) else _e4m3_rows))
        elif isinstance(act, int) and not isinstance(act, bool):
            hooks.append(lin.register_forward_pre_hook(_e4m3_groups(act)))
        elif act is True or (act and not name.endswith(act)):  # a tuple: every layer but those names' ends
            hooks.append(lin.register_forward_pre_hook(_e4m3_rows))
    return hooks, {"weights_changed_share": changed / total, "max_abs_weight_change": most}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=3000)
    ap.add_argument("--windows", type=int, nargs="+", default=[256])
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--calib-tokens", type=int, default=2048)
    ap.add_argument("--calib-skip", type=int, default=0, help="calibration tokens left out of the Hessians: the first (sink) "
                    "tokens, whose massive activations dominate them (model/calibrate.py; 0 measured better)")
    ap.add_argument("--seed", type=int, default=0, help="the self-generated calibration's sampling seed")
    ap.add_argument("--calib-joined", action="store_true", help="self: run the generated sequences as one text (one "
                    "first token, whose massive activations then weigh once) instead of each from its start")
    ap.add_argument("--calib-seq-len", type=int, default=256, help="self: tokens per generated sequence")
    ap.add_argument("--calib-top-p", type=float, default=1.0, help="the self-generated calibration's nucleus (1: plain sampling)")
    ap.add_argument("--hessian-cache", type=Path, default=None, help="keep the calibration Hessians in this file between runs")
    ap.add_argument("--calib-source", choices=("plays", "self"), default="plays",
                    help="plays: text from the middle of the plays; self: sequences the float model samples itself "
                    "(model/calibrate.self_generated, 256 tokens each, as many as --calib-tokens needs)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="the model's dtype for calibration and evaluation (bfloat16: the GPU engine's; the "
                    "variants' weights are installed rounded to it, and the reference row is that dtype's model)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    corpus = build_corpus(models_home().parent / "shakespeare.txt").read_text(encoding="utf-8")
    start = corpus.find("ACT")
    text, calib_text = corpus[start:], corpus[len(corpus) // 2 :]
    assert start + a.tokens * 8 < len(corpus) // 2, "evaluated text would overlap the calibration slice"
    seq = a.calib_seq_len
    n_seqs = -(-a.calib_tokens // seq)
    cfg = EngineConfig(device="cpu", dtype=a.dtype, sink_tokens=a.sinks, window=max(a.windows + [seq]), max_sessions=n_seqs)
    m = build_engine_model(cfg)
    ids = m.tokenizer(text[: a.tokens * 8], add_special_tokens=False).input_ids[: a.tokens]
    runner = ModelRunner(m.model, m.pool, m.attn, m.device)
    key = (a.calib_tokens, a.calib_skip, a.calib_source, a.seed, a.calib_top_p, a.calib_joined, a.calib_seq_len, a.dtype)
    cached = torch.load(a.hessian_cache) if a.hessian_cache and a.hessian_cache.exists() else None
    cached = cached if cached and cached["key"] == key and "chunks" in cached else None
    if a.calib_source == "plays":
        cal = m.tokenizer(calib_text[: a.calib_tokens * 8], add_special_tokens=False).input_ids[: a.calib_tokens]
        chunks = [cal[i : i + 512] for i in range(0, len(cal), 512)]
        calls = text_calls(chunks)
    else:
        t0 = time.perf_counter()
        # a cache hit keeps its sampled text too: sampling it again took ~6 min in bf16 on the CPU
        chunks = cached["chunks"] if cached else self_generated(runner.forward, m.model.embed.num_embeddings, n_seqs, seq,
                                                                 seed=a.seed, top_p=a.calib_top_p)
        cal = [t for c in chunks for t in c]
        print(f"self-generated calibration{' (cached)' if cached else ''}: {n_seqs} x {seq} tokens, "
              f"{time.perf_counter() - t0:.1f} s; first: {m.tokenizer.decode(chunks[0][:40])!r}", flush=True)
        # the sequences one after another as one text, or each from its start in slot 0
        calls = text_calls(chunks) if a.calib_joined else [Call(c, [0], [0], [len(c)]) for c in chunks]

    t0 = time.perf_counter()
    if all(getattr(VARIANTS[v][0], "calibrated", True) is False for v in a.variants):
        hs, rows = {n: None for n in linear_targets(m.model)}, {}  # round to nearest only: no Hessians needed
    elif cached:
        hs, rows = cached["h"], cached["rows"]
    else:
        def run(c: Call) -> None:
            runner.forward(c.ids, c.slots, c.starts, c.q_lens, rows=[0])
        hs, rows = collect_hessians(m.model, run, calls, skip_rows=a.calib_skip)
        if a.hessian_cache:
            torch.save({"key": key, "h": hs, "rows": rows, "chunks": chunks}, a.hessian_cache)
    print(f"calibration: {len(cal) if rows else 0} tokens, {len(rows)} layers, {time.perf_counter() - t0:.1f} s", flush=True)
    assert all(r == len(cal) - a.calib_skip for r in rows.values()), rows
    originals = {n: lin.weight.detach().clone() for n, lin in linear_targets(m.model).items()}
    norms = {n: p.detach().clone() for n, p in m.model.named_parameters() if "norm" in n}  # smoothing folds into these
    out = {**header(), "note": f"EMULATED: weights quantized by each variant, dequantized to float32 and installed in "
           f"{a.dtype}; the model runs in {a.dtype}", "reference": a.dtype,
           "tokens": a.tokens, "calibration_tokens": len(cal) if rows else 0, "calibration_text": "from the middle of the plays (disjoint)" if a.calib_source == "plays" else
           f"self-generated by the float model ({n_seqs} x {seq} tokens, random first token, temperature 1, "
           f"top-p {a.calib_top_p}, seed {a.seed})",
           "calibration_skipped_first_tokens": a.calib_skip,
           "mode": "streaming (StreamingLLM), chunked prefill of 512", "lm_head": "float32 (tied embedding)", "results": {}}
    ref: dict[int, float] = {}
    for name in [a.dtype, *a.variants]:
        hooks, moved = [], {}
        t0 = time.perf_counter()
        if name != a.dtype:
            fn, act = VARIANTS[name]
            layered = getattr(fn, "sequential", False) or getattr(fn, "smooth", None) is not None
            if layered and a.calib_skip:
                raise SystemExit("sequential and smoothed variants calibrate on every row (--calib-skip 0)")
            rounded = layerwise(runner, calls, fn) if layered else None
            hooks, moved = apply(m.model, fn, hs, originals, act, rounded)
        tq = time.perf_counter() - t0
        rows_out = dict(moved)
        for w in a.windows:
            res = evaluate(m, cfg, ids, [Mode.STREAMING], EvalPlan(sinks=a.sinks, window=w))[Mode.STREAMING]
            ppl = res.ppl()
            ref.setdefault(w, ppl)
            rows_out[f"{a.sinks}+{w}"] = {"ppl": ppl, f"ratio_vs_{a.dtype}": ppl / ref[w], "scored_tokens": len(res.nll)}
            print(f"{name:<58} {a.sinks}+{w}: ppl {ppl:.4f} (x{ppl / ref[w]:.4f}) quantize {tq:.1f} s", flush=True)
        rows_out["quantize_seconds"] = round(tq, 1)
        out["results"][name] = rows_out
        for hk in hooks:
            hk.remove()
        for n, lin in linear_targets(m.model).items():
            lin.weight.data = originals[n].clone()  # a copy: smoothing scales the installed weights in place
        params = dict(m.model.named_parameters())
        for n, p in norms.items():
            params[n].data.copy_(p)
        if a.json:  # after every variant: a cut-short run keeps what finished
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(out, indent=1) + "\n")
    if a.json:
        plot(out, a.json.with_suffix(".png"))


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = out.get("reference", "float32")
    names = [n for n in out["results"] if n != ref]
    caches = [c for c in out["results"][ref] if "+" in c]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(names) * len(caches) + 1.5))
    for j, c in enumerate(caches):
        vals = [out["results"][n].get(c, {}).get(f"ratio_vs_{ref}", float("nan")) for n in names]
        ax.barh([i * len(caches) + j for i in range(len(names))], [v - 1 for v in vals], label=f"cache {c}")
    ax.set_yticks([i * len(caches) for i in range(len(names))], names, fontsize=7)
    ax.invert_yaxis()
    for x, st in ((0.01, ":"), (0.03, "--")):
        ax.axvline(x, color="gray", ls=st)
    ax.set_xlabel(f"perplexity / {ref} - 1 (targets: 1% fp8/int8, 3% int4)")
    ax.set_title(f"SmolLM2-135M, plays, {out['tokens']} tokens, StreamingLLM, emulated on the CPU")
    ax.legend(fontsize=7)
    save_plot(path.stem, fig, str(path.parent))


if __name__ == "__main__":
    main()
