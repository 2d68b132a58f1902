"""Model side of the decode benches: shapes, random-weight models, our CUDA-graph
decode step, and the two baselines.

* ours: the engine's model (swiftinfer_core/model/llama.py) with TritonAttention,
  one decode step captured in a CUDA graph (next token fed back on the GPU,
  stream positions advanced inside the graph).
* ours+fused: the same weights through `fused_decode_forward` below (bench-only
  thin forward): add+RMSNorm and SiLU*up from kernels/fused.py, 9 kernels a layer.
* ours+gemv (batch 1): `gemv_decode_forward`, weights read by kernels/gemv.py
  with RMSNorm / SiLU*up / residual fused in: 6 kernels a layer.
* baseline (a) `StreamingBaseline`: eager PyTorch on transformers' Llama modules,
  as mit-han-lab/streaming-llm does it: pre-RoPE K/V cached, torch.cat of the
  new token, all cached keys re-rotated at arange(len) every step, matmul +
  softmax attention, eviction by torch.cat of sinks and recent tokens.
* baseline (b): one full transformers forward over the last W tokens per token.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from swiftinfer_core.cache.kv_fp8 import Fp8KV
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.kernels.attention import TorchAttention
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.fused import add_rmsnorm, silu_mul
from swiftinfer_core.kernels.gemv import gemv
from swiftinfer_core.kernels.gemv_fusion import Fusion, Prologue
from swiftinfer_core.kernels.rope import inv_freq
from swiftinfer_core.model.loader import ModelArgs

SHAPES = {
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                      intermediate_size=11008, rope_theta=10000.0, tie_embeddings=False),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                         intermediate_size=1536, rope_theta=100000.0, tie_embeddings=True),
    # Llama-3.1-8B (meta-llama/Llama-3.1-8B config.json): GQA 32/8 heads, 128K context by
    # llama3 RoPE scaling of the 8K-trained frequencies (kernels/rope.py applies it)
    "llama3.1-8b": dict(vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                        intermediate_size=14336, rope_theta=500000.0, tie_embeddings=False, max_position=131072,
                        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                          original_max_position_embeddings=8192)),
}


def model_args(name: str) -> ModelArgs:
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r} (known: {sorted(SHAPES)})")
    shape = dict(SHAPES[name])
    if shape.get("rope_scaling") is not None:
        shape["rope_scaling"] = dict(shape["rope_scaling"])  # each ModelArgs its own dict
    return ModelArgs(**{"max_position": 8192, **shape}, name=name)


def rope_parameters(args: ModelArgs) -> dict:
    """HF config's ``rope_parameters`` for ``args`` (theta plus its scaling, if any)."""
    return {"rope_type": "default", "rope_theta": args.rope_theta, **(args.rope_scaling or {})}


def hf_model(args: ModelArgs, device, dtype=torch.bfloat16):
    """transformers LlamaForCausalLM with random weights (baselines only)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads, num_key_value_heads=args.num_kv_heads,
        head_dim=args.head_dim, max_position_embeddings=args.max_position, rms_norm_eps=args.rms_eps,
        rope_theta=args.rope_theta, rope_parameters=rope_parameters(args),
        tie_word_embeddings=args.tie_embeddings, attn_implementation="sdpa",
    )
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            m = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    return m.to(dtype).eval()


def our_model(args: ModelArgs, hf, device, dtype=torch.bfloat16):
    """The engine's Llama, holding the same weights as ``hf``."""
    from swiftinfer_core.model.llama import Llama

    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            m = Llama(args)
    finally:
        torch.set_default_dtype(prev)
    state = {k: v for k, v in hf.state_dict().items()}
    m.load_hf_state(state)
    m = m.to(dtype).eval()
    # as the engine builds it (runner/build.py): fp32 LM head, fused-GEMV batch-1 decode and fused norms on GPU
    m.lm_head.float()
    m.gemv_decode = torch.device(device).type == "cuda"
    m.fuse_elementwise(torch.device(device).type == "cuda")
    return m


def fill_pool(pool: KVPool) -> None:
    """Random pre-RoPE K/V everywhere (never time on zeros). An fp8 pool (cache/kv_fp8.py):
    random positive e4m3 codes 0..126 (0x7F is NaN), scales 2**-6; in place, no temporary
    as big as a layer."""
    for k, v in zip(pool.k, pool.v):
        if isinstance(k, Fp8KV):
            for c in (k, v):
                c.data.view(torch.uint8).random_(0, 127)
                c.scale.fill_(2.0**-6)
            continue
        k.normal_()
        v.normal_()


@torch.inference_mode()
def fused_decode_forward(model, ids, attn, plan, pool) -> torch.Tensor:
    """Bench-only thin forward over the engine model's weights: ids [B] -> logits [B, V]."""
    a = model.args
    eps = a.rms_eps
    x = model.embed(ids)
    res, d = None, x
    B = ids.shape[0]
    for i, L in enumerate(model.layers):
        hq, hkv, hd = L.hq, L.hkv, L.head_dim
        n, res = add_rmsnorm(d, res, L.attn_norm.weight, eps)
        qkv = torch.nn.functional.linear(n, L.wqkv.weight, L.wqkv.bias)
        q, k, v = qkv.split([hq * hd, hkv * hd, hkv * hd], dim=-1)
        o = attn.forward(plan, q.view(B, hq, hd), k.view(B, hkv, hd), v.view(B, hkv, hd), pool.k[i], pool.v[i])
        o = torch.nn.functional.linear(o.reshape(B, hq * hd), L.wo.weight)
        n, res = add_rmsnorm(o, res, L.mlp_norm.weight, eps)
        d = torch.nn.functional.linear(silu_mul(torch.nn.functional.linear(n, L.w13.weight)), L.w2.weight)
    n, _ = add_rmsnorm(d, res, model.norm.weight, eps)
    return torch.nn.functional.linear(n.to(model.lm_head.weight.dtype), model.lm_head.weight).float()


GEMV_DEFAULT = dict(block_n=8, block_k=512, num_warps=4, stages=3)


def weight_list(model) -> list[tuple[str, torch.Tensor]]:
    """(kind, weight) of every matrix a decode step reads, in order."""
    out = []
    for L in model.layers:
        out += [("qkv", L.wqkv.weight), ("o", L.wo.weight), ("w13", L.w13.weight), ("w2", L.w2.weight)]
    return out + [("lm_head", model.lm_head.weight)]


_PROLOGUE = {"qkv": Prologue.RMSNORM, "o": Prologue.NONE, "w13": Prologue.RMSNORM, "w2": Prologue.SILU_MUL,
             "lm_head": Prologue.RMSNORM}


@torch.inference_mode()
def gemv_decode_forward(model, ids, attn, plan, pool, cfg: dict | None = None) -> torch.Tensor:
    """Bench-only batch-1 forward: ids [1] -> logits [1, V] float32, every weight
    read by kernels/gemv.py with the norms / SiLU*up / residual adds fused in."""
    cfg = cfg or {}
    eps = model.args.rms_eps
    h = model.embed(ids)  # [1, H], updated in place by the residual epilogues
    for i, L in enumerate(model.layers):
        assert L.wqkv.bias is None
        hq, hkv, hd = L.hq, L.hkv, L.head_dim
        qkv = gemv(h, L.wqkv.weight, Fusion(Prologue.RMSNORM, L.attn_norm.weight, eps), **cfg.get("qkv", GEMV_DEFAULT))
        q, k, v = qkv.split([hq * hd, hkv * hd, hkv * hd], dim=-1)
        o = attn.forward(plan, q.view(1, hq, hd), k.view(1, hkv, hd), v.view(1, hkv, hd), pool.k[i], pool.v[i])
        gemv(o.view(1, hq * hd), L.wo.weight, Fusion(residual=h), out=h, **cfg.get("o", GEMV_DEFAULT))
        gu = gemv(h, L.w13.weight, Fusion(Prologue.RMSNORM, L.mlp_norm.weight, eps), **cfg.get("w13", GEMV_DEFAULT))
        gemv(gu, L.w2.weight, Fusion(Prologue.SILU_MUL, residual=h), out=h, **cfg.get("w2", GEMV_DEFAULT))
    return gemv(h, model.lm_head.weight, Fusion(Prologue.RMSNORM, model.norm.weight, eps), out_dtype=torch.float32,
                **cfg.get("lm_head", GEMV_DEFAULT))


def tune_gemv(model, time_graph, configs) -> tuple[dict, list[dict]]:
    """For each weight kind, time every layer's GEMV (distinct weights, so no L2
    reuse) per config in a CUDA graph, and cuBLAS (F.linear) alike. Returns the
    best config per kind and all timings."""
    dev = model.lm_head.weight.device
    kinds: dict[str, list[torch.Tensor]] = {}
    for kind, w in weight_list(model):
        kinds.setdefault(kind, []).append(w)
    best, rows = {}, []
    for kind, ws in kinds.items():
        N, K = ws[0].shape
        kx = 2 * K if _PROLOGUE[kind] is Prologue.SILU_MUL else K
        x = torch.randn(1, kx, device=dev, dtype=ws[0].dtype)
        nw = torch.rand(K, device=dev, dtype=ws[0].dtype) + 0.5
        xl = torch.randn(1, K, device=dev, dtype=ws[0].dtype)
        nbytes = sum(w.numel() * w.element_size() for w in ws)
        fusion = Fusion(_PROLOGUE[kind], nw if _PROLOGUE[kind] is Prologue.RMSNORM else None)

        def cublas():
            with torch.inference_mode():
                for w in ws:
                    torch.nn.functional.linear(xl, w)

        t, g = time_graph(cublas)
        rows.append({"kind": kind, "N": N, "K": K, "count": len(ws), "impl": "cublas", "us_each": t / len(ws) * 1e6, "GBps": nbytes / t / 1e9})
        best_t = None
        for c in configs:
            def trit(c=c):
                for w in ws:
                    gemv(x, w, fusion, **c)

            t, g = time_graph(trit)
            rows.append({"kind": kind, "N": N, "K": K, "count": len(ws), "impl": "triton", **c, "us_each": t / len(ws) * 1e6, "GBps": nbytes / t / 1e9})
            if best_t is None or t < best_t:
                best_t, best[kind] = t, c
    return best, rows


def weight_bytes_read(args: ModelArgs, dtype_bytes: int = 2) -> int:
    """Bytes of weights one decode step reads (embedding: one row per token, ignored)."""
    h, i, d = args.hidden_size, args.intermediate_size, args.head_dim
    per_layer = h * d * (2 * args.num_heads + 2 * args.num_kv_heads) + 3 * h * i + 2 * h
    return (per_layer * args.num_layers + args.vocab_size * h + h) * dtype_bytes


def kv_bytes_read(args: ModelArgs, layout: StreamLayout, dtype_bytes: int = 2) -> int:
    """K and V of a full cache, every layer, per sequence per step."""
    return 2 * args.num_layers * args.num_kv_heads * layout.capacity * args.head_dim * dtype_bytes


class StreamingBaseline:
    """Baseline (a): eager StreamingLLM as in mit-han-lab/streaming-llm (pos_shift
    attention + StartRecentKVCache), batch 1, over transformers' modules."""

    def __init__(self, hf, sinks: int, window: int):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

        self.hf, self.sinks, self.window = hf, sinks, window
        self._rope, self._repeat = apply_rotary_pos_emb, repeat_kv
        cfg = hf.config
        self.hq, self.hkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.k: list[torch.Tensor] = []  # per layer [1, Hkv, L, D], pre-RoPE
        self.v: list[torch.Tensor] = []

    def prefill_random(self, length: int) -> None:
        p = next(self.hf.parameters())
        shape = (1, self.hkv, length, self.hd)
        self.k = [torch.randn(shape, device=p.device, dtype=p.dtype) for _ in self.hf.model.layers]
        self.v = [torch.randn(shape, device=p.device, dtype=p.dtype) for _ in self.hf.model.layers]

    @torch.inference_mode()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """token [1] -> logits [1, V]; then evicts so the cache holds sinks + window - 1
        (room for the next token), like StartRecentKVCache.evict_for_space."""
        m = self.hf.model
        x = m.embed_tokens(token[None])  # [1, 1, H]
        first = not self.k
        L = (0 if first else self.k[0].shape[2]) + 1
        pos = torch.arange(L, device=x.device)[None]
        cos, sin = m.rotary_emb(x, pos)  # [1, L, D]
        for i, layer in enumerate(m.layers):
            at = layer.self_attn
            h = layer.input_layernorm(x)
            q = at.q_proj(h).view(1, 1, self.hq, self.hd).transpose(1, 2)
            k = at.k_proj(h).view(1, 1, self.hkv, self.hd).transpose(1, 2)
            v = at.v_proj(h).view(1, 1, self.hkv, self.hd).transpose(1, 2)
            if first:
                self.k.append(k)
                self.v.append(v)
            else:
                k = torch.cat([self.k[i], k], dim=2)
                v = torch.cat([self.v[i], v], dim=2)
                self.k[i], self.v[i] = k, v
            q, _ = self._rope(q, q, cos[:, -1:], sin[:, -1:])
            _, kr = self._rope(k, k, cos, sin)  # every cached key re-rotated, every step
            kr, vr = self._repeat(kr, self.hq // self.hkv), self._repeat(v, self.hq // self.hkv)
            w = torch.matmul(q, kr.transpose(2, 3)) / math.sqrt(self.hd)
            w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
            o = torch.matmul(w, vr).transpose(1, 2).reshape(1, 1, self.hq * self.hd)
            x = x + at.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = self.hf.lm_head(m.norm(x))[:, -1].float()
        cap = self.sinks + self.window
        if self.k[0].shape[2] >= cap:  # make room for the next token
            keep = cap - 1
            s, r = self.sinks, keep - self.sinks
            self.k = [torch.cat([k[:, :, :s], k[:, :, k.shape[2] - r:]], dim=2) for k in self.k]
            self.v = [torch.cat([v[:, :, :s], v[:, :, v.shape[2] - r:]], dim=2) for v in self.v]
        return logits


class OurDecoder:
    """Batch-B decode with the engine model + TritonAttention, one CUDA graph per step."""

    def __init__(self, model, args: ModelArgs, layout: StreamLayout, batch: int, device, mode: str, num_slots: int | None = None,
                 gemv_cfg: dict | None = None, fused_combine: bool = False, kv_dtype: torch.dtype = torch.bfloat16):
        from swiftinfer_core.kernels.attention import TritonAttention
        from swiftinfer_core.kernels.batch import AttnBatch
        from swiftinfer_core.kernels.rope import inv_freq

        assert mode in ("engine", "fused", "gemv") and (mode != "gemv" or batch == 1)
        self.model, self.args, self.layout, self.mode, self.gemv_cfg = model, args, layout, mode, gemv_cfg
        self.attn = TritonAttention(layout, inv_freq(args.head_dim, args.rope_theta, args.rope_scaling).to(device), args.head_dim**-0.5,
                                    fused_combine=fused_combine)
        self.pool = KVPool(layout, args.num_layers, num_slots or batch, args.num_kv_heads, args.head_dim, kv_dtype, device)
        fill_pool(self.pool)
        cap = layout.capacity
        starts = [37 * cap + 11 * b for b in range(batch)]  # long conversations: every cache full
        self.plan = self.attn.prepare(AttnBatch.build(list(range(batch)), starts, [1] * batch, device))
        self.ids = torch.randint(0, args.vocab_size, (batch,), device=device)
        self.graph = None

    def _step(self):
        with torch.inference_mode():
            if self.mode == "fused":
                logits = fused_decode_forward(self.model, self.ids, self.attn, self.plan, self.pool)
            elif self.mode == "gemv":
                logits = gemv_decode_forward(self.model, self.ids, self.attn, self.plan, self.pool, self.gemv_cfg)
            else:
                logits = self.model(self.ids, self.attn, self.plan, self.pool)
            self.ids.copy_(logits.argmax(-1))
            self.plan.starts.add_(1)

    def capture(self):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            self._step()  # compile + allocate the split-K workspace outside the capture
        torch.cuda.current_stream().wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()
        torch.cuda.synchronize()

    def step(self) -> torch.Tensor:
        """One token for every sequence; returns them on the host (a server must)."""
        self.graph.replay()
        return self.ids.cpu()

    def device_time_per_step(self, n: int = 30) -> float:
        """Seconds per step of n back-to-back replays (no host round trip between)."""
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.graph.replay()
        s.record()
        for _ in range(n):
            self.graph.replay()
        e.record()
        e.synchronize()
        return s.elapsed_time(e) / 1e3 / n


def time_steps(decoder: OurDecoder, steps: int, batch: int, warmup: int = 3) -> dict:
    """Captures ``decoder``'s graph, runs ``warmup`` steps, then times ``steps`` steps
    on the host clock, each ending with the tokens on the host (step() syncs): the
    wall time between consecutive tokens a server sees. Returns ITL p50/p99 in ms and
    aggregate tokens/s (``batch`` tokens a step over the mean step time)."""
    decoder.capture()
    for _ in range(warmup):
        decoder.step()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        decoder.step()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    p99 = ts[min(len(ts) - 1, round(0.99 * (len(ts) - 1)))]
    return {"itl_p50_ms": statistics.median(ts) * 1e3, "itl_p99_ms": p99 * 1e3, "tok_s": batch / statistics.mean(ts)}


@torch.inference_mode()
def equivalence_check(hf, model, args: ModelArgs, device, attn_cls, sinks=4, window=28, prompt=40, decode=8, hf32=None, gemv_cfg=None) -> dict:
    """Same random tokens through baseline (a) (token by token, physical eviction)
    and through ours (one prefill chunk, then decode steps; engine forward and
    fused forward): relative logits error per position. Cache 4+28 so the
    stream wraps. Proves the benches time the same computation."""
    layout = StreamLayout(sinks, window)
    T = prompt + decode
    ids = torch.randint(0, args.vocab_size, (T,), device=device)
    base = StreamingBaseline(hf, sinks, window)
    want = torch.cat([base.step(ids[t : t + 1]) for t in range(T)])  # [T, V]
    out = {}
    if hf32 is not None:  # the noise floor: the baseline itself in bf16 vs float32
        b32 = StreamingBaseline(hf32, sinks, window)
        want32 = torch.cat([b32.step(ids[t : t + 1]) for t in range(T)])
        err = ((want - want32).norm(dim=-1) / want32.norm(dim=-1)).double()
        out["baseline_bf16_vs_fp32"] = {"max_rel_err": err.max().item(), "mean_rel_err": err.mean().item(),
                                        "argmax_agree": (want.argmax(-1) == want32.argmax(-1)).float().mean().item()}
    for variant in ("engine", "fused", "gemv", "gemv_fc"):
        kw = {"fused_combine": True} if variant == "gemv_fc" else {}
        if kw and attn_cls is TorchAttention:
            continue
        attn = attn_cls(layout, inv_freq(args.head_dim, args.rope_theta, args.rope_scaling).to(device), args.head_dim**-0.5, **kw)
        pool = KVPool(layout, args.num_layers, 2, args.num_kv_heads, args.head_dim, next(model.parameters()).dtype, device)
        fill_pool(pool)  # garbage in unused rows must not matter
        got = [model(ids[:prompt], attn, attn.prepare(AttnBatch.build([1], [0], [prompt], device)), pool)]
        for t in range(prompt, T):
            plan = attn.prepare(AttnBatch.build([1], [t], [1], device))
            if variant == "fused":
                got.append(fused_decode_forward(model, ids[t : t + 1], attn, plan, pool))
            elif variant in ("gemv", "gemv_fc"):
                got.append(gemv_decode_forward(model, ids[t : t + 1], attn, plan, pool, gemv_cfg))
            else:
                got.append(model(ids[t : t + 1], attn, plan, pool))
        got = torch.cat(got)
        for ref_name, ref in [("vs_baseline_bf16", want)] + ([("vs_baseline_fp32", want32)] if hf32 is not None else []):
            err = ((got - ref).norm(dim=-1) / ref.norm(dim=-1)).double()
            out[f"{variant}_{ref_name}"] = {"max_rel_err": err.max().item(), "mean_rel_err": err.mean().item(),
                                            "decode_steps_max_rel_err": err[prompt:].max().item(),
                                            "argmax_agree": (got.argmax(-1) == ref.argmax(-1)).float().mean().item()}
    return out
