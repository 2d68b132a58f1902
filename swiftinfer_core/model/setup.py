"""From an EngineConfig to a ready model: device, dtype, weights, KV pool, attention backend."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.config import AttentionBackend, Device, DType, EngineConfig, LoadFormat, Quantization
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.kernels.attention import Attention, TorchAttention, TritonAttention
from swiftinfer_core.model import fused_decode
from swiftinfer_core.kernels.torch_decode import CpuAttention
from swiftinfer_core.model.cpu_weights import quantize_int8, transpose_linears
from swiftinfer_core.model.fetch import resolve_model
from swiftinfer_core.model.families import build_model
from swiftinfer_core.model.llama import Llama
from swiftinfer_core.model.layers import GemmaRMSNorm, ShardPlan, layer_specs
from swiftinfer_core.model.loader import ModelArgs, read_args, read_state_dict

log = logging.getLogger(__name__)

_DTYPES = {DType.FLOAT32: torch.float32, DType.BFLOAT16: torch.bfloat16, DType.FLOAT16: torch.float16}
CPU_DEFAULT_SLOTS = 16
MAX_DEFAULT_SLOTS = 1024


@dataclass
class LoadedModel:
    args: ModelArgs
    model: nn.Module  # the family's model class (model/families.py)
    tokenizer: object
    layout: StreamLayout
    pool: KVPool
    attn: Attention
    device: torch.device
    dtype: torch.dtype
    path: Path


def resolve_device(cfg: EngineConfig) -> torch.device:
    if cfg.device is Device.CUDA or (cfg.device is Device.AUTO and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InvalidRequestError("device 'cuda' requested but no CUDA GPU is visible")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_dtype(cfg: EngineConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype is DType.AUTO:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[cfg.dtype]


def resolve_layout(cfg: EngineConfig, args: ModelArgs) -> StreamLayout:
    window = cfg.window if cfg.window is not None else min(2048, args.max_position) - cfg.sink_tokens
    if cfg.sink_tokens >= window:
        raise InvalidRequestError(f"sink_tokens ({cfg.sink_tokens}) must be smaller than window ({window})")
    return StreamLayout(cfg.sink_tokens, window)


def make_attention(cfg: EngineConfig, device: torch.device, layout: StreamLayout, args: ModelArgs,
                   shard: ShardPlan | None = None) -> Attention:
    """The backend with every layer's spec (RoPE freqs and scale, local window, ALiBi
    slopes of this rank's query heads, soft-cap) for this cache's capacity."""
    shard = shard or ShardPlan.single(args)
    if args.sliding_window and layout.window < args.sliding_window:
        log.warning("window %d is shorter than %s's own sliding window %d: its local layers see only the cached window "
                    "(cache/layout.py, local layers)", layout.window, args.name, args.sliding_window)
    specs = [replace(s, freqs=s.freqs.to(device), alibi=None if s.alibi is None else s.alibi.to(device))
             for s in layer_specs(args, layout.capacity, shard.q_lo, shard.q_hi)]
    backend = cfg.attention
    if backend is AttentionBackend.AUTO:
        backend = AttentionBackend.TRITON if device.type == "cuda" else AttentionBackend.TORCH
    if backend is AttentionBackend.TRITON:
        return TritonAttention(layout, specs[0].freqs, specs[0].scale, specs)
    if device.type == "cpu" and cfg.cpu_fast_path and plain_attention(specs):
        return CpuAttention(layout, specs[0].freqs, specs[0].scale)  # reference semantics, lean one-token decode
    return TorchAttention(layout, specs[0].freqs, specs[0].scale, specs)


def plain_attention(specs: list) -> bool:
    """Every layer attends the same plain way (one RoPE, one scale; no local window,
    ALiBi or soft-cap): what CpuAttention's one-token path computes."""
    first = specs[0]
    return all(s.sliding_window == 0 and s.alibi is None and s.softcap == 0 and s.scale == first.scale
               and torch.equal(s.freqs, first.freqs) for s in specs)


def num_slots(cfg: EngineConfig, args: ModelArgs, layout: StreamLayout, device: torch.device, dtype: torch.dtype, kv_heads: int) -> int:
    if cfg.max_sessions is not None:
        return cfg.max_sessions
    if device.type != "cuda":
        return CPU_DEFAULT_SLOTS
    free, total = torch.cuda.mem_get_info(device)
    per_slot = KVPool.bytes_per_slot(layout, args.num_layers, kv_heads, args.head_dim, dtype)
    if cfg.memory_share < 1:
        budget = shared_kv_budget(free, total, torch.cuda.memory_reserved(device), cfg.memory_share, cfg.gpu_memory_utilization)
    else:
        budget = int(free * cfg.gpu_memory_utilization)
    slots = budget // per_slot
    if slots < 1:
        raise InvalidRequestError(f"no GPU memory for even one cache slot ({per_slot / 2**20:.0f} MiB each)")
    return min(slots, MAX_DEFAULT_SLOTS)


def shared_kv_budget(free: int, total: int, held: int, share: float, utilization: float) -> int:
    """KV bytes of an engine that owns ``share`` of a device of ``total`` bytes and
    already ``held`` some (weights): ``share * total * utilization - held``. Refused
    when that is not free: another process on the device holds more than its share."""
    budget = int(share * total * utilization) - held
    if budget <= 0:
        raise InvalidRequestError(f"this engine's share of the GPU ({share:g} x {total / 2**30:.1f} GiB x {utilization:g}) "
                                  f"is used up by its own weights ({held / 2**30:.1f} GiB): raise the share or use fewer engines per GPU")
    if budget > free:
        raise InvalidRequestError(f"this engine's share of the GPU leaves {budget / 2**30:.1f} GiB for its KV cache but only "
                                  f"{free / 2**30:.1f} GiB are free: another process on the GPU holds more than its share")
    return budget


def fill_weights(model: nn.Module, cfg: EngineConfig, checkpoint: Callable[[], dict]) -> None:
    """The checkpoint's weights, or random ones (load_format=random) for benchmarks."""
    if cfg.load_format is not LoadFormat.RANDOM:
        model.load_hf_state(checkpoint())
        return
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.data.fill_(1.0)
        else:
            p.data.normal_(0.0, 0.02, generator=gen)
    for mod in model.modules():  # Gemma's norms scale by (1 + w): the identity is w = 0
        if isinstance(mod, GemmaRMSNorm):
            mod.weight.data.zero_()


def cpu_weight_format(model: nn.Module, cfg: EngineConfig, device: torch.device) -> None:
    """int8 weights (cfg.quantization), float weights in the CPU's faster layout
    (model/cpu_weights.py), and the CPU thread count."""
    if cfg.quantization is Quantization.INT8:
        if device.type != "cpu":
            raise InvalidRequestError(f"quantization 'int8' runs on the CPU only, not on {device}")
        if not isinstance(model, Llama):
            raise InvalidRequestError(f"quantization 'int8' serves the Llama family only, not {type(model).__name__}")
        quantize_int8(model, head=not cfg.lm_head_fp32)
    if device.type == "cpu" and cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)  # process-wide, the engine's step thread included
    if device.type == "cpu" and cfg.cpu_fast_path:
        transpose_linears(model)  # what int8 left in float: the head under lm_head_fp32


def load_model(cfg: EngineConfig, shard: ShardPlan | None = None) -> LoadedModel:
    from transformers import AutoTokenizer

    path = resolve_model(cfg.model)
    args = read_args(path)
    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    layout = resolve_layout(cfg, args)
    with torch.device("meta"):
        model = build_model(args, shard)
    model = model.to_empty(device=device).to(dtype)
    if cfg.lm_head_fp32:
        model.lm_head.float()  # before loading: keep the checkpoint's own precision
    fill_weights(model, cfg, lambda: read_state_dict(path))
    cpu_weight_format(model, cfg, device)
    model.eval()
    kv_heads = model.shard.kv_hi - model.shard.kv_lo
    slots = num_slots(cfg, args, layout, device, dtype, kv_heads)
    pool = KVPool(layout, args.num_layers, slots, kv_heads, args.head_dim, dtype, device)
    attn = make_attention(cfg, device, layout, args, model.shard)
    model.gemv_decode = device.type == "cuda" and isinstance(attn, TritonAttention) and fused_decode.supports(model)
    log.info("model %s on %s/%s: %d cache slots of %d+%d", path.name, device, dtype, slots, layout.sinks, layout.window)
    return LoadedModel(
        args=args, model=model, tokenizer=AutoTokenizer.from_pretrained(path), layout=layout, pool=pool,
        attn=attn, device=device, dtype=dtype, path=path,
    )


def relayout(m: LoadedModel, cfg: EngineConfig, slots: int) -> LoadedModel:
    """The same weights with a fresh KV pool and attention for ``cfg``'s sinks/window."""
    layout = resolve_layout(cfg, m.args)
    heads = m.model.shard.kv_hi - m.model.shard.kv_lo
    pool = KVPool(layout, m.args.num_layers, slots, heads, m.args.head_dim, m.dtype, m.device)
    return replace(m, layout=layout, pool=pool, attn=make_attention(cfg, m.device, layout, m.args, m.model.shard))
