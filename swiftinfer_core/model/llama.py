"""Llama-family decoder that runs on the streaming cache: Llama, Mistral, Qwen2,
Qwen3 (QK-norm) and Phi-3 (fused qkv and gate_up in the checkpoint).

Reads as single-device code. Tensor parallelism enters only through the
``ShardPlan`` (which heads/rows this rank holds) and one all-reduce after the
row-parallel O and down projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.kernels.attention import Attention
from swiftinfer_core.kernels.fused import add_rmsnorm, silu_mul
from swiftinfer_core.kernels.torch_decode import CpuDecodePlan
from swiftinfer_core.model.args import ModelArgs, common_args
from swiftinfer_core.model.fused_decode import fused_decode
from swiftinfer_core.model.layers import RMSNorm, ShardPlan, Weights, in_dtype, permute_heads, rotary_perm

__all__ = ["Block", "Llama", "ShardPlan", "in_dtype", "llama_args"]


def llama_args(cfg: dict, name: str) -> ModelArgs:
    kind = cfg.get("model_type", "llama")
    return common_args(cfg, name, qkv_bias=bool(cfg.get("attention_bias", kind == "qwen2")), qk_norm=kind == "qwen3")


class Block(nn.Module):
    def __init__(self, args: ModelArgs, shard: ShardPlan):
        super().__init__()
        d = args.head_dim
        self.hq, self.hkv = shard.q_hi - shard.q_lo, shard.kv_hi - shard.kv_lo
        self.head_dim = d
        self.shard = shard
        self.attn_norm = RMSNorm(args.hidden_size, args.rms_eps)
        self.wqkv = nn.Linear(args.hidden_size, (self.hq + 2 * self.hkv) * d, bias=args.qkv_bias)
        self.q_norm = RMSNorm(d, args.rms_eps) if args.qk_norm else None  # Qwen3: per head, before RoPE
        self.k_norm = RMSNorm(d, args.rms_eps) if args.qk_norm else None
        self.wo = nn.Linear(self.hq * d, args.hidden_size, bias=False)
        self.mlp_norm = RMSNorm(args.hidden_size, args.rms_eps)
        inter = shard.i_hi - shard.i_lo
        self.w13 = nn.Linear(args.hidden_size, 2 * inter, bias=False)  # gate and up, fused
        self.w2 = nn.Linear(inter, args.hidden_size, bias=False)
        # norms with their residual add, and SiLU(gate)*up, as one Triton kernel each (kernels/fused.py)
        # instead of ~7 and 2 torch kernels: set by the loader on GPU (Llama.fuse_elementwise)
        self.fused = False

    def forward(self, x, attn: Attention, plan, k_cache, v_cache, layer: int) -> torch.Tensor:
        """x: [T, hidden] float32 residual stream; matmuls run in the weights' dtype."""
        return self.post(x, self.attend(self.pre(x), attn, plan, k_cache, v_cache, layer))

    # The three phases, apart so that runner/piecewise.py can capture pre and post in CUDA graphs
    # and run attention, whose launch shape follows the batch, between them.
    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """[T, hidden] float32 -> qkv [T, (hq + 2 hkv) d] in the weights' dtype."""
        dt = in_dtype(self.wqkv)
        if self.fused:
            return self.wqkv(add_rmsnorm(x, None, self.attn_norm.weight, self.attn_norm.eps, out_dtype=dt)[0])
        return self.wqkv(self.attn_norm(x).to(dt))

    def attend(self, qkv: torch.Tensor, attn: Attention, plan, k_cache, v_cache, layer: int) -> torch.Tensor:
        """qkv [T, ...] -> o [T, hq, d]; stores the step's K/V in the cache."""
        T, d = qkv.shape[0], self.head_dim
        q, k, v = qkv.split([self.hq * d, self.hkv * d, self.hkv * d], dim=-1)
        q, k, v = q.view(T, self.hq, d), k.view(T, self.hkv, d), v.view(T, self.hkv, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return attn.forward(plan, q, k, v, k_cache, v_cache, layer)

    def post(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Residual x [T, hidden] float32 and attention o [T, hq, d] -> the next layer's x."""
        T, dt = x.shape[0], in_dtype(self.wqkv)
        attn_out = self.shard.reduce(self.wo(o.reshape(T, self.hq * self.head_dim)))
        if self.fused:
            y, h = add_rmsnorm(x, attn_out, self.mlp_norm.weight, self.mlp_norm.eps, out_dtype=dt)
            return h + self.shard.reduce(self.w2(silu_mul(self.w13(y))))
        h = x + attn_out
        gate, up = self.w13(self.mlp_norm(h).to(dt)).chunk(2, dim=-1)
        return h + self.shard.reduce(self.w2(F.silu(gate) * up))


class Llama(nn.Module):
    GEMV_DECODE = True  # model/fused_decode.py can run its batch-1 steps

    def __init__(self, args: ModelArgs, shard: ShardPlan | None = None):
        super().__init__()
        self.args = args
        self.shard = shard or ShardPlan.single(args)
        self.embed = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(Block(args, self.shard) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_eps)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.gemv_decode = False  # set by the loader on GPU: batch-1 steps take model/fused_decode.py
        self.fused = False  # fuse_elementwise
        self.cpu_decode = None  # set by the loader on CPU (model/cpu_decode.CpuDecoder): one-token steps in C

    def fuse_elementwise(self, on: bool) -> None:
        """Every block's and the head's norms (with their residual adds) and SiLU*up through
        kernels/fused.py (Triton: GPU, or the interpreter): same math, a few kernels per layer."""
        self.fused = on
        for layer in self.layers:
            layer.fused = on

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attn: Attention, plan, pool: KVPool, rows: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [T] -> logits [R, vocab] (float32) for the token rows ``rows`` (all if None)."""
        if self.gemv_decode and input_ids.shape[0] == 1:
            return fused_decode(self, input_ids, attn, plan, pool)
        if self.cpu_decode is not None and isinstance(plan, CpuDecodePlan):
            return self.cpu_decode(input_ids, attn, plan, pool, rows)
        # the residual stream stays float32 even for bf16 weights: with bf16 residuals
        # and logits, top-1 agreed with float32 on only ~97% of teacher-forced tokens
        x = self.embed(input_ids).float()
        for i, layer in enumerate(self.layers):
            x = layer(x, attn, plan, pool.k[i], pool.v[i], i)
        return self.head(x, rows)

    def head(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Last residual [T, hidden] -> logits [R, vocab] float32 of ``rows`` (all if None)."""
        if rows is not None:
            x = x.index_select(0, rows)
        dt = in_dtype(self.lm_head)
        if self.fused:
            return self.lm_head(add_rmsnorm(x.contiguous(), None, self.norm.weight, self.norm.eps, out_dtype=dt)[0]).float()
        return self.lm_head(self.norm(x).to(dt)).float()

    def load_hf_state(self, state) -> None:
        """Copy HF-named weights in, slicing this rank's shard and fusing qkv / gate-up."""
        a, s, d, w = self.args, self.shard, self.args.head_dim, Weights(state)
        perm = rotary_perm(d, a.rotary)  # identity unless the rotary is partial (Phi-4-mini)
        self.embed.weight.data.copy_(w.get("model.embed_tokens.weight"))
        self.norm.weight.data.copy_(w.get("model.norm.weight"))
        head = "lm_head.weight" if not a.tie_embeddings and "lm_head.weight" in w else "model.embed_tokens.weight"
        self.lm_head.weight.data.copy_(w.get(head))
        q_rows, kv_rows = (s.q_lo * d, s.q_hi * d), (s.kv_lo * d, s.kv_hi * d)
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            if p + "self_attn.qkv_proj.weight" in w:  # Phi-3: q, k, v stacked in one matrix
                fused, nq, nk = p + "self_attn.qkv_proj.weight", a.num_heads * d, a.num_kv_heads * d
                q = w.rows(fused, *q_rows)
                k = w.rows(fused, nq + kv_rows[0], nq + kv_rows[1])
                v = w.rows(fused, nq + nk + kv_rows[0], nq + nk + kv_rows[1])
            else:
                q = w.rows(p + "self_attn.q_proj.weight", *q_rows)
                k = w.rows(p + "self_attn.k_proj.weight", *kv_rows)
                v = w.rows(p + "self_attn.v_proj.weight", *kv_rows)
            layer.wqkv.weight.data.copy_(torch.cat([permute_heads(q, d, perm), permute_heads(k, d, perm), v]))
            if a.qkv_bias:
                qb = w.rows(p + "self_attn.q_proj.bias", *q_rows)
                kb = w.rows(p + "self_attn.k_proj.bias", *kv_rows)
                vb = w.rows(p + "self_attn.v_proj.bias", *kv_rows)
                layer.wqkv.bias.data.copy_(torch.cat([permute_heads(qb, d, perm), permute_heads(kb, d, perm), vb]))
            if a.qk_norm:
                layer.q_norm.weight.data.copy_(w.get(p + "self_attn.q_norm.weight")[perm])
                layer.k_norm.weight.data.copy_(w.get(p + "self_attn.k_norm.weight")[perm])
            layer.wo.weight.data.copy_(w.cols(p + "self_attn.o_proj.weight", *q_rows))
            if p + "mlp.gate_up_proj.weight" in w:  # Phi-3: gate rows then up rows
                fused, inter = p + "mlp.gate_up_proj.weight", a.intermediate_size
                gate, up = w.rows(fused, s.i_lo, s.i_hi), w.rows(fused, inter + s.i_lo, inter + s.i_hi)
            else:
                gate = w.rows(p + "mlp.gate_proj.weight", s.i_lo, s.i_hi)
                up = w.rows(p + "mlp.up_proj.weight", s.i_lo, s.i_hi)
            layer.w13.weight.data.copy_(torch.cat([gate, up]))
            layer.w2.weight.data.copy_(w.cols(p + "mlp.down_proj.weight", s.i_lo, s.i_hi))
            layer.attn_norm.weight.data.copy_(w.get(p + "input_layernorm.weight"))
            layer.mlp_norm.weight.data.copy_(w.get(p + "post_attention_layernorm.weight"))
