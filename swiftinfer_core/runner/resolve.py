"""From an EngineConfig to a RankConfig, once, on rank 0: the only place that
reads "auto" settings, model names and config.json (workers get the result).
"""

from __future__ import annotations

from pathlib import Path

import torch

from swiftinfer_core.cache import kv_fp8
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.config import (
    AttentionBackend,
    Device,
    DType,
    EngineConfig,
    KVCacheDType,
    LoadFormat,
    Quantization,
    QuantRounding,
)
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model.args import ModelArgs
from swiftinfer_core.model.ct_checkpoint import Prequantized, read_prequantized
from swiftinfer_core.model.families import family_of
from swiftinfer_core.model.llama import Llama
from swiftinfer_core.model.quant import QuantFormat
from swiftinfer_core.runner.rank_config import RankConfig, Weights

_QUANT = {Quantization.INT8: QuantFormat.INT8, Quantization.INT4: QuantFormat.INT4,
          Quantization.FP8: QuantFormat.FP8}  # NONE: float weights
_DTYPES = {DType.FLOAT32: torch.float32, DType.BFLOAT16: torch.bfloat16, DType.FLOAT16: torch.float16}


def torch_device(cfg: EngineConfig) -> torch.device:
    """The torch device ``cfg.device`` names ('auto': the current CUDA GPU if any, else the CPU)."""
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


def resolve_quant(cfg: EngineConfig, device: torch.device, dtype: torch.dtype, args: ModelArgs) -> tuple[QuantFormat | None, bool]:
    """(weight format, LM head in float32). 'auto' is int8 with an int8 head where the CPU
    int8 path runs (a Llama-family model in float32 on one CPU device; model/cpu_decode.py),
    else float weights; lm_head_fp32 None means true except under that automatic int8."""
    auto_int8 = (cfg.quantization is Quantization.AUTO and device.type == "cpu" and dtype == torch.float32
                 and cfg.tp_size == 1 and family_of(args.family).model is Llama)
    quant = QuantFormat.INT8 if auto_int8 else _QUANT.get(cfg.quantization)
    head_fp32 = cfg.lm_head_fp32 if cfg.lm_head_fp32 is not None else not auto_int8
    return quant, head_fp32


def resolve_gguf(cfg: EngineConfig, path: Path, device: torch.device, dtype: torch.dtype, args: ModelArgs) -> Path | None:
    """quantization 'gguf': the GGUF beside the model folder (the default model's is fetched
    into its folder, pinned); what cannot run is refused here, before any weight is read."""
    if cfg.quantization is not Quantization.GGUF:
        return None
    from swiftinfer_core.model import fetch

    if device.type != "cpu":
        raise InvalidRequestError(f"quantization 'gguf' runs on the CPU only (torch ops over the blocks; no {device.type} "
                                  "kernels): set device 'cpu'")
    if dtype != torch.float32:
        raise InvalidRequestError("quantization 'gguf' runs in float32 (dtype 'auto' or 'float32')")
    if cfg.tp_size != 1:
        raise InvalidRequestError("quantization 'gguf' runs with tp_size 1 only")
    if cfg.load_format is LoadFormat.RANDOM:
        raise InvalidRequestError("quantization 'gguf' reads the GGUF's blocks: not with load_format 'random'")
    if family_of(args.family).model is not Llama:
        raise InvalidRequestError(f"quantization 'gguf' serves the Llama family only, not {args.family}")
    gguf = fetch.gguf_in(path)
    if gguf is None and path.resolve() == fetch.default_model_dir().resolve():
        gguf = fetch.ensure_default_gguf()
    if gguf is None:
        raise InvalidRequestError(f"quantization 'gguf' needs the GGUF the model folder was converted from, in the folder "
                                  f"(one *.gguf); {path} has none")
    return gguf


def resolve_prequantized(cfg: EngineConfig, path: Path, device: torch.device, args: ModelArgs) -> Prequantized | None:
    """A checkpoint quantized already (model/ct_checkpoint.py) is served in its own format:
    'quantization' may be 'none', 'auto' or that format; what cannot serve it is refused here."""
    pre = read_prequantized(path) if cfg.load_format is not LoadFormat.RANDOM else None
    if pre is None:
        return None
    name = pre.fmt.value
    if cfg.quantization not in (Quantization.NONE, Quantization.AUTO, Quantization(name)):
        raise InvalidRequestError(f"{path.name} is stored in {name} already; quantization '{cfg.quantization.value}' would "
                                  f"round those values again: use 'none' or '{name}'")
    if cfg.quant_rounding is QuantRounding.GPTQ:
        raise InvalidRequestError(f"{path.name} is stored in {name} already: quant_rounding 'gptq' has no float weights to round")
    if cfg.tp_size != 1:
        raise InvalidRequestError(f"{path.name} is stored in {name}: quantized layers run on one device (tp_size 1)")
    if family_of(args.family).model is not Llama:
        raise InvalidRequestError(f"{path.name}: quantized checkpoints of the Llama family are served, not {args.family}")
    if pre.fmt is QuantFormat.FP8 and device.type != "cuda":
        raise InvalidRequestError(f"{path.name} is stored in fp8, which runs on CUDA GPUs of compute capability 8.9+ only")
    return pre


def rank_config(cfg: EngineConfig, path: Path, args: ModelArgs) -> RankConfig:
    """Every rank's build settings for ``cfg`` over the checkpoint at ``path`` (already resolved)."""
    device = torch_device(cfg)
    dtype = resolve_dtype(cfg, device)
    quant, head_fp32 = resolve_quant(cfg, device, dtype, args)
    pre = resolve_prequantized(cfg, path, device, args)
    group, zero_point = cfg.quant_group, cfg.quant_zero_point
    if pre is not None:  # the checkpoint's format, whatever 'auto' would have picked
        quant, group, zero_point = pre.fmt, pre.group or group, pre.zero_point
        head_fp32 = cfg.lm_head_fp32 if cfg.lm_head_fp32 is not None else True
    down_terms = cfg.fp8_down_activation_terms or cfg.fp8_activation_terms
    if (not cfg.fp8_activations or cfg.fp8_activation_terms != 1 or down_terms != 1) and quant is not QuantFormat.FP8:
        raise InvalidRequestError(f"fp8_activations and fp8_activation_terms apply to fp8 weights; {path.name} is served "
                                  f"{'in ' + quant.value if quant else 'unquantized'}")
    gguf = resolve_gguf(cfg, path, device, dtype, args)
    if gguf is not None and cfg.lm_head_fp32 is None:
        head_fp32 = False  # the head as the file stores it (the default model: Q8_0, tied to the embedding)
    triton = cfg.attention is AttentionBackend.TRITON or (cfg.attention is AttentionBackend.AUTO and device.type == "cuda")
    return RankConfig(
        args=args, layout=resolve_layout(cfg, args), device_type=device.type, dtype=dtype,
        weights=Weights.RANDOM if cfg.load_format is LoadFormat.RANDOM else Weights.CHECKPOINT, path=path, seed=cfg.seed,
        attention="triton" if triton else "torch", slots=cfg.max_sessions, lm_head_fp32=head_fp32,
        quant=quant, quant_group=group, quant_zero_point=zero_point, fp8_activations=cfg.fp8_activations,
        fp8_activation_terms=cfg.fp8_activation_terms, fp8_down_terms=down_terms,
        prequantized=pre is not None,
        calibration_tokens=cfg.quant_calibration_tokens if cfg.quant_rounding is QuantRounding.GPTQ else 0,
        smoothing=cfg.quant_smoothing,
        cpu_fast_path=cfg.cpu_fast_path, cpu_threads=cfg.cpu_threads,
        cpu_native=cfg.cpu_native_kernels,
        gemv_decode=True, fused_elementwise=True, memory_share=cfg.memory_share, gpu_memory_utilization=cfg.gpu_memory_utilization,
        split_mixed=cfg.split_mixed_steps, kv_dtype=kv_fp8.FP8 if cfg.kv_cache_dtype is KVCacheDType.FP8 else None,
        gguf=gguf,
    )
