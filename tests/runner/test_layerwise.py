"""runner/layerwise.py on the real default model: GPTQ's calibration one decoder layer at
a time gives exactly the one-pass Hessians (without ``sequential``), holds one layer's
Hessians at once, leaves the weights as they were, and (``sequential``) calibrates each
layer on what the already-rounded layers feed it."""

from __future__ import annotations

import torch

from swiftinfer_core.config import EngineConfig
from swiftinfer_core.engine.engine_model import relayout
from swiftinfer_core.model.calibrate import collect_hessians
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize
from swiftinfer_core.runner.layerwise import Call, parallel_call, round_layerwise, text_calls
from swiftinfer_core.runner.model_runner import ModelRunner


def _runner(base_model, slots: int) -> ModelRunner:
    cfg = EngineConfig(device="cpu", sink_tokens=4, window=124, max_sessions=slots)
    m = relayout(base_model, cfg, slots)
    return ModelRunner(m.model, m.pool, m.attn, m.device)


def _one_pass(runner: ModelRunner, calls: list[Call]) -> dict[str, torch.Tensor]:
    def run(c: Call) -> None:
        runner.forward(c.ids, c.slots, c.starts, c.q_lens, rows=[0])
    return collect_hessians(runner.model, run, calls)[0]


def _layerwise(runner: ModelRunner, calls: list[Call], rounding, sequential: bool):
    seen: dict[str, torch.Tensor] = {}

    def round_linear(name, linear, h):
        seen[name] = h.clone()
        return rounding(linear.weight)
    return seen, round_layerwise(runner, calls, round_linear, sequential=sequential)


def _int4(w: torch.Tensor) -> torch.Tensor:
    return dequantize(quantize(w, QuantFormat.INT4, 64))


def test_layerwise_hessians_are_the_one_pass_hessians(base_model, shakespeare_ids):
    """Two texts side by side in one forward; one text in three chunks through a 4+124
    cache, whose third chunk evicts (layer i's KV written layer by layer, in call order)."""
    ids = shakespeare_ids
    runner = _runner(base_model, 2)
    before = {n: p.detach().clone() for n, p in runner.model.named_parameters()}
    for calls in ([parallel_call([ids[:100], ids[100:180]])], text_calls([ids[:100], ids[100:200], ids[200:300]])):
        ref = _one_pass(runner, calls)
        seen, rep = _layerwise(runner, calls, _int4, sequential=False)
        assert list(seen) == list(ref)  # every decoder linear, layer by layer in model order
        assert rep.layers == len(ref) == 4 * 30
        for name, h in ref.items():
            assert h.dtype == seen[name].dtype == torch.float64
            assert torch.equal(seen[name], h), name
        per_layer = [sum(h.numel() * 8 for n, h in ref.items() if n.startswith(f"layers.{i}.")) for i in range(30)]
        assert rep.hessian_bytes == max(per_layer) < sum(per_layer) / 29
    for n, p in runner.model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_sequential_calibrates_each_layer_on_the_rounded_layers_outputs(base_model, shakespeare_ids):
    ids = shakespeare_ids
    runner = _runner(base_model, 1)
    calls = text_calls([ids[:120], ids[120:240]])
    ref = _one_pass(runner, calls)
    same, _ = _layerwise(runner, calls, lambda w: w.float(), sequential=True)  # rounding that changes nothing
    for name, h in ref.items():
        assert torch.allclose(same[name], h, rtol=1e-6, atol=0), name
    seen, _ = _layerwise(runner, calls, _int4, sequential=True)
    for name in ("layers.0.wqkv", "layers.0.wo", "layers.0.w13", "layers.0.w2"):
        assert torch.equal(seen[name], ref[name]), name  # layer 0 reads the embeddings either way
    for i in (1, 15, 29):
        name = f"layers.{i}.wqkv"
        rel = ((seen[name] - ref[name]).norm() / ref[name].norm()).item()
        assert rel > 1e-4, (name, rel)  # fed by int4 layers, not the float ones
    assert torch.equal(runner.model.layers[3].w2.weight, base_model.model.layers[3].w2.weight)


def test_smoothing_before_rounding_keeps_the_model_and_gives_the_smoothed_models_hessians(base_model, shakespeare_ids):
    """quant_smoothing (runner/calibration.smoothing, alpha 0.5) on the real model: each layer is
    smoothed once its Hessians are in, the model's logits stay those of the float model, and the
    rescaled Hessians handed to the rounding are the ones the smoothed model itself gives."""
    import copy

    from swiftinfer_core.runner.calibration import smoothing

    ids = shakespeare_ids
    cfg = EngineConfig(device="cpu", sink_tokens=4, window=124, max_sessions=1)
    m = relayout(base_model, cfg, 1)
    runner = ModelRunner(copy.deepcopy(m.model), m.pool, m.attn, m.device)  # smoothing changes weights in place
    calls = text_calls([ids[:120], ids[120:240]])
    probe = ids[300:360]
    want = runner.forward(probe, [0], [0], [len(probe)], rows=None)
    norm = runner.model.layers[7].mlp_norm.weight.clone()
    seen: dict[str, torch.Tensor] = {}

    def round_linear(name, linear, h):
        seen[name] = h.clone()
        return linear.weight
    round_layerwise(runner, calls, round_linear, before_round=smoothing(runner.model, 0.5))
    got = runner.forward(probe, [0], [0], [len(probe)], rows=None)
    assert (got - want).abs().max().item() < 1e-4 * want.abs().max().item()
    assert ((runner.model.layers[7].mlp_norm.weight - norm).abs() / norm.abs()).max().item() > 0.1  # smoothed
    ref = _one_pass(runner, calls)  # the smoothed model's own Hessians
    assert list(seen) == list(ref)
    for name, h in ref.items():
        assert ((seen[name] - h).norm() / h.norm()).item() < 1e-5, name
