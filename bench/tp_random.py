"""Random-weight Llama shards for tensor-parallel GPU tests and benches.

Needs no pydantic and no checkpoint on disk (the GPU image has neither): a
``RandomCheckpoint`` yields each HF tensor deterministically from (seed, name)
on the rank's device, so TP=1 and every rank of TP=N slice the *same* model;
``Llama.load_hf_state`` slices it by the rank's ShardPlan as it would a real
checkpoint. ``RandomShard`` is the picklable ShardBuilder the TPDriver and its
workers call; ``ShardRunner`` is the local runner it returns (ModelRunner's
forward and decode CUDA graphs, minus the sampler and its pydantic imports).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.engine.cuda_graph import DecodeGraphs
from swiftinfer_core.kernels.attention import TorchAttention
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.rope import inv_freq
from swiftinfer_core.model.llama import Llama, ShardPlan
from swiftinfer_core.model.loader import ModelArgs

# Shapes of the Llama-2 family (vocab 32000, no GQA below 70B).
SHAPES = {
    "7b": ModelArgs(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128, intermediate_size=11008, name="llama-7b-shape"),
    "13b": ModelArgs(vocab_size=32000, hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=40, head_dim=128, intermediate_size=13824, name="llama-13b-shape"),
    "70b": ModelArgs(vocab_size=32000, hidden_size=8192, num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128, intermediate_size=28672, name="llama-70b-shape"),
}


def hf_shapes(a: ModelArgs) -> dict[str, tuple[int, ...]]:
    h, d, i = a.hidden_size, a.head_dim, a.intermediate_size
    out = {"model.embed_tokens.weight": (a.vocab_size, h), "model.norm.weight": (h,), "lm_head.weight": (a.vocab_size, h)}
    for n in range(a.num_layers):
        p = f"model.layers.{n}."
        out |= {
            p + "self_attn.q_proj.weight": (a.num_heads * d, h), p + "self_attn.k_proj.weight": (a.num_kv_heads * d, h),
            p + "self_attn.v_proj.weight": (a.num_kv_heads * d, h), p + "self_attn.o_proj.weight": (h, a.num_heads * d),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        }
    return out


class RandomCheckpoint(Mapping):
    """name -> full float32 tensor on ``device``, the same on every rank for the same seed."""

    def __init__(self, args: ModelArgs, seed: int, device: torch.device):
        self.shapes, self.seed, self.device = hf_shapes(args), seed, device
        self.fan_in = {n: s[-1] for n, s in self.shapes.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        if len(shape) == 1:  # norms: near 1
            base = torch.ones(shape, device=self.device)
        else:
            base = torch.zeros(shape, device=self.device)
        g = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        noise = torch.randn(shape, generator=g, device=self.device)
        scale = 0.02 if len(shape) == 1 else (1.0 if "embed" in name else self.fan_in[name] ** -0.5)
        return base + noise * scale

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


class ShardRunner:
    """One rank's model on its cache: ModelRunner.forward / capture_decode_graphs / graphs."""

    def __init__(self, model: Llama, pool: KVPool, attn, device: torch.device):
        self.model, self.pool, self.attn, self.device = model, pool, attn, device
        self.graphs: DecodeGraphs | None = None

    def forward(self, ids, slots, starts, q_lens, rows) -> torch.Tensor:
        batch = AttnBatch.build(slots, starts, q_lens, self.device)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        row_t = None if rows is None else torch.tensor(rows, dtype=torch.long, device=self.device)
        return self.model(input_ids, self.attn, self.attn.prepare(batch), self.pool, row_t)

    def capture_decode_graphs(self, max_batch: int) -> None:
        self.graphs = DecodeGraphs(self.model, self.pool, self.attn, self.device, max_batch)
        self.graphs.capture()


@dataclass(frozen=True)
class RandomShard:
    """ShardBuilder: this rank's slice of a random model, its KV pool and attention (cuda or cpu)."""

    args: ModelArgs
    sinks: int
    window: int
    slots: int
    dtype: torch.dtype
    seed: int = 0
    device_type: str = "cuda"
    triton: bool = True

    def __call__(self, plan: ShardPlan, groups=None) -> ShardRunner:
        device = torch.device("cuda", torch.cuda.current_device()) if self.device_type == "cuda" else torch.device("cpu")
        with torch.device("meta"):
            model = Llama(self.args, plan).to(self.dtype)
        model = model.to_empty(device=device)
        model.load_hf_state(RandomCheckpoint(self.args, self.seed, device))
        model.eval()
        layout = StreamLayout(self.sinks, self.window)
        pool = KVPool(layout, self.args.num_layers, self.slots, plan.kv_hi - plan.kv_lo, self.args.head_dim, self.dtype, device)
        freqs = inv_freq(self.args.head_dim, self.args.rope_theta, self.args.rope_scaling).to(device)
        scale = self.args.head_dim**-0.5
        if self.triton:
            from swiftinfer_core.kernels.attention import TritonAttention

            attn = TritonAttention(layout, freqs, scale)
        else:
            attn = TorchAttention(layout, freqs, scale)
        return ShardRunner(model, pool, attn, device)
