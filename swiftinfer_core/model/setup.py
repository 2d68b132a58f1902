"""From an EngineConfig to a ready model: device, dtype, weights, KV pool, attention backend."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.config import AttentionBackend, Device, DType, EngineConfig, LoadFormat, Quantization
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.kernels.attention import Attention, TorchAttention, TritonAttention
from swiftinfer_core.model import fused_decode
from swiftinfer_core.kernels.rope import inv_freq
from swiftinfer_core.kernels.torch_decode import CpuAttention
from swiftinfer_core.model.cpu_weights import quantize_int8, transpose_linears
from swiftinfer_core.model.fetch import resolve_model
from swiftinfer_core.model.llama import Llama, ShardPlan
from swiftinfer_core.model.loader import ModelArgs, read_args, read_state_dict

log = logging.getLogger(__name__)

_DTYPES = {DType.FLOAT32: torch.float32, DType.BFLOAT16: torch.bfloat16, DType.FLOAT16: torch.float16}
CPU_DEFAULT_SLOTS = 16
MAX_DEFAULT_SLOTS = 1024


@dataclass
class LoadedModel:
    args: ModelArgs
    model: Llama
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


def make_attention(cfg: EngineConfig, device: torch.device, layout: StreamLayout, args: ModelArgs) -> Attention:
    freqs = inv_freq(args.head_dim, args.rope_theta, args.rope_scaling).to(device)
    backend = cfg.attention
    if backend is AttentionBackend.AUTO:
        backend = AttentionBackend.TRITON if device.type == "cuda" else AttentionBackend.TORCH
    if backend is AttentionBackend.TRITON:
        return TritonAttention(layout, freqs, args.head_dim**-0.5)
    if device.type == "cpu" and cfg.cpu_fast_path:
        return CpuAttention(layout, freqs, args.head_dim**-0.5)  # reference semantics, lean one-token decode
    return TorchAttention(layout, freqs, args.head_dim**-0.5)


def num_slots(cfg: EngineConfig, args: ModelArgs, layout: StreamLayout, device: torch.device, dtype: torch.dtype, kv_heads: int) -> int:
    if cfg.max_sessions is not None:
        return cfg.max_sessions
    if device.type != "cuda":
        return CPU_DEFAULT_SLOTS
    free, _ = torch.cuda.mem_get_info(device)
    per_slot = KVPool.bytes_per_slot(layout, args.num_layers, kv_heads, args.head_dim, dtype)
    slots = int(free * cfg.gpu_memory_utilization) // per_slot
    if slots < 1:
        raise InvalidRequestError(f"no GPU memory for even one cache slot ({per_slot / 2**20:.0f} MiB each)")
    return min(slots, MAX_DEFAULT_SLOTS)


def fill_weights(model: Llama, cfg: EngineConfig, checkpoint: Callable[[], dict]) -> None:
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


def cpu_weight_format(model: Llama, cfg: EngineConfig, device: torch.device) -> None:
    """int8 weights (cfg.quantization), float weights in the CPU's faster layout
    (model/cpu_weights.py), and the CPU thread count."""
    if cfg.quantization is Quantization.INT8:
        if device.type != "cpu":
            raise InvalidRequestError(f"quantization 'int8' runs on the CPU only, not on {device}")
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
        model = Llama(args, shard)
    model = model.to_empty(device=device).to(dtype)
    if cfg.lm_head_fp32:
        model.lm_head.float()  # before loading: keep the checkpoint's own precision
    fill_weights(model, cfg, lambda: read_state_dict(path))
    cpu_weight_format(model, cfg, device)
    model.eval()
    kv_heads = model.shard.kv_hi - model.shard.kv_lo
    slots = num_slots(cfg, args, layout, device, dtype, kv_heads)
    pool = KVPool(layout, args.num_layers, slots, kv_heads, args.head_dim, dtype, device)
    attn = make_attention(cfg, device, layout, args)
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
    return replace(m, layout=layout, pool=pool, attn=make_attention(cfg, m.device, layout, m.args))
