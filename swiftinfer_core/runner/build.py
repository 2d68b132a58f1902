"""``build_rank``: the one way a rank gets its model, KV pool, attention and runner.

Used by the single-device engine (engine/engine_model.py), every tensor-parallel
rank (parallel/driver.py on rank 0, parallel/worker.py on the others), the CPU
path and the benches; what differs between them is only the RankConfig
(runner/rank_config.py), the rank's ShardPlan and, on a tensor-parallel rank,
its group (``ranks``), which makes the checkpoint read lazily per slice and the
ranks agree on one slot count (rank 0's slot ids must exist on every rank).

Order: model on the meta device in its dtype -> real (uninitialised) storage on
the rank's device -> LM head to float32 (before the weights: it keeps the
checkpoint's own precision) -> weights -> CPU formats (one device only) -> KV
pool -> attention backend. No transformers import: a worker that needs no
tokenizer saves seconds of start-up.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Protocol

import torch
from torch import nn

from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.kernels.attention import Attention, TorchAttention, TritonAttention
from swiftinfer_core.kernels.torch_decode import CpuAttention
from swiftinfer_core.kernels.triton_shapes import check_triton_heads
from swiftinfer_core.kernels import cpu_native
from swiftinfer_core.model import cpu_decode, fused_decode, split_head
from swiftinfer_core.model.cpu_weights import quantize_int8, transpose_linears
from swiftinfer_core.model.ct_checkpoint import PrequantizedCheckpoint, read_prequantized
from swiftinfer_core.model.families import build_model
from swiftinfer_core.model.fp8 import fp8_unsupported
from swiftinfer_core.model.fp8_linear import quantize_fp8_linears
from swiftinfer_core.model.layers import ShardPlan, layer_specs
from swiftinfer_core.model.llama import Llama
from swiftinfer_core.model.loader import read_state_dict
from swiftinfer_core.model.quant import QuantFormat
from swiftinfer_core.model.quant_linear import cpu_int4_available, quantize_linears
from swiftinfer_core.model.split_head import SplitHead
from swiftinfer_core.runner.calibration import gptq_weights
from swiftinfer_core.runner.kv_slots import num_slots
from swiftinfer_core.runner.model_runner import ModelRunner
from swiftinfer_core.runner.rank_config import RankConfig, Weights
from swiftinfer_core.runner.weights import (
    SeededCheckpoint,
    ShardedCheckpoint,
    fill_random,
)

log = logging.getLogger(__name__)


class Ranks(Protocol):
    """A tensor-parallel rank's view of its group (parallel/groups.py TPGroups)."""

    rank: int

    def min_int(self, value: int) -> int:
        """The smallest ``value`` over all ranks."""


def rank_device(device_type: str) -> torch.device:
    """This process's device: a CUDA rank's current device (its launcher set it), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")


def build_rank(cfg: RankConfig, plan: ShardPlan | None = None, ranks: Ranks | None = None) -> ModelRunner:
    """This rank's runner. ``plan``: its heads and MLP rows (all of them when None),
    ``all_reduce`` already bound; ``ranks``: its group on a tensor-parallel rank."""
    if ranks is not None and (cfg.quant is not None or cfg.gguf is not None):
        name = cfg.quant.value if cfg.quant is not None else "gguf"
        raise InvalidRequestError(f"quantization '{name}' runs on one device only (quantized layers are not sharded)")
    device = rank_device(cfg.device_type)
    plan = plan or ShardPlan.single(cfg.args)
    with torch.device("meta"):
        model = build_model(cfg.args, plan).to(cfg.dtype)  # dtype on meta: the real allocation is already bf16/fp16
    model = model.to_empty(device=device)
    if cfg.lm_head_fp32:
        model.lm_head.float()  # before loading: keep the checkpoint's own precision
    stored = fill_weights(model, cfg, device, sharded=ranks is not None)
    kernels = native_kernels(cfg, device) if ranks is None else None
    if cfg.gguf is not None:
        gguf_weights(model, cfg, device, kernels)
    if ranks is None:
        cpu_weight_format(model, cfg, device, kernels, stored)  # quantized weights and the transposed CPU layout: one device only
        if wants_split_head(model, cfg, device):
            model.lm_head = SplitHead(model.lm_head.weight)  # the float32 head on tensor cores (model/split_head.py)
            torch.cuda.empty_cache()  # the float32 copy's memory back to the driver before the KV pool is sized from it
    model.eval()
    kv_heads = plan.kv_hi - plan.kv_lo
    slots = num_slots(cfg, device, kv_heads)
    if ranks is not None and cfg.slots is None:
        slots = ranks.min_int(slots)  # every rank's pool holds every slot id rank 0 hands out
    check_kv_dtype(cfg, device)
    pool = KVPool(cfg.layout, cfg.args.num_layers, slots, kv_heads, cfg.args.head_dim, cfg.cache_dtype, device)
    attn = make_attention(cfg, device, plan, kernels)
    # the fused batch-1 chain (model/fused_decode.py): float weights. supports() takes fp8 and int8/int4 too
    # (kernels/gemv_fusion.py); with session 35's RMSNorm folds their chain ran slower than their unfused step
    # (H100 and H200, docs/quantization.md), and the chain with the norm handed over (session 36) has not been
    # timed on a GPU yet: bench/gpu_batch1.sh times both (bench/formats_step.py --chain both).
    model.gemv_decode = (cfg.gemv_decode and cfg.quant is None and device.type == "cuda" and isinstance(attn, TritonAttention)
                         and fused_decode.supports(model))
    if isinstance(model, Llama):
        model.fuse_elementwise(cfg.fused_elementwise and device.type == "cuda")
    # the C layer reads and writes float32 caches (model/cpu_decode.py): an fp8 cache decodes through CpuAttention
    if kernels is not None and isinstance(attn, CpuAttention) and cpu_decode.supports(model) and cfg.kv_dtype is None:
        model.cpu_decode = cpu_decode.CpuDecoder(model, kernels)  # one-token steps: int8 products in C
    if ranks is None:
        log.info("model %s on %s/%s: %d cache slots of %d+%d (%s)", cfg.name, device, cfg.dtype, slots, cfg.layout.sinks,
                 cfg.layout.window, cfg.cache_dtype)
    else:
        log.info("rank %d: heads [%d,%d) kv [%d,%d) mlp [%d,%d), %d cache slots on %s",
                 ranks.rank, plan.q_lo, plan.q_hi, plan.kv_lo, plan.kv_hi, plan.i_lo, plan.i_hi, slots, device)
    return ModelRunner(model, pool, attn, device, split_mixed=cfg.split_mixed)


def wants_split_head(model: nn.Module, cfg: RankConfig, device: torch.device) -> bool:
    """lm_head_fp32 under 16-bit weights on a GPU with bfloat16 GEMMs, for heads that
    Llama.head drives (it asks the head for its input dtype; other families read
    ``lm_head.weight``). A float32 model keeps its plain float32 head."""
    head = getattr(model, "lm_head", None)
    return (cfg.lm_head_fp32 and cfg.dtype != torch.float32 and split_head.supported(device) and getattr(type(model), "head", None) is Llama.head
            and isinstance(head, nn.Linear) and head.weight.dtype == torch.float32)


def check_kv_dtype(cfg: RankConfig, device: torch.device) -> None:
    """An fp8 cache under the Triton kernels needs e4m3 conversions in hardware:
    compute capability 8.9+ (Ada, Hopper). The torch ops convert anywhere."""
    if cfg.kv_dtype is None or device.type != "cuda" or cfg.attention != "triton":
        return
    cc = torch.cuda.get_device_capability(device)
    if cc < (8, 9):
        raise InvalidRequestError(f"kv_cache_dtype 'fp8' with Triton attention needs a GPU of compute capability 8.9 or "
                                  f"newer; this one is {cc[0]}.{cc[1]}: use kv_cache_dtype 'auto'")


def fill_weights(model: nn.Module, cfg: RankConfig, device: torch.device, sharded: bool) -> dict | None:
    """The checkpoint's weights (``sharded``: read per slice), or random ones (runner/weights.py).
    A checkpoint quantized already (``cfg.prequantized``) fills the float model with its
    weights dequantized and returns its codes: qualified name -> QuantizedWeight."""
    if cfg.weights is Weights.RANDOM:
        fill_random(model, cfg.seed)
    elif cfg.weights is Weights.SEEDED:
        model.load_hf_state(SeededCheckpoint(cfg.args, cfg.seed, device))
    elif cfg.prequantized:
        state = PrequantizedCheckpoint(read_state_dict(cfg.path), read_prequantized(cfg.path))  # as resolve.py read it
        model.load_hf_state(state)
        return state.quantized_weights(cfg.args)
    else:
        model.load_hf_state(ShardedCheckpoint(cfg.path) if sharded else read_state_dict(cfg.path))
    return None


def gguf_weights(model: nn.Module, cfg: RankConfig, device: torch.device, kernels=None) -> None:
    """quantization 'gguf': the GGUF's blocks replace the float linears (model/gguf_load.py),
    decode rows through ``kernels``' GGUF products when given; CPU float32 only (runner/resolve.py refuses the rest first; checked again for benches)."""
    if device.type != "cpu" or cfg.dtype != torch.float32 or cfg.quant is not None:
        raise InvalidRequestError("quantization 'gguf' runs on the CPU in float32 only, and alone")
    from swiftinfer_core.model.gguf_linear import compact_bytes
    from swiftinfer_core.model.gguf_load import load_gguf_blocks

    n = load_gguf_blocks(model, cfg.gguf, head=not cfg.lm_head_fp32, kernels=kernels)
    compact, as_f32 = compact_bytes(model)
    log.info("gguf: %d modules from %s, compact %.1f MiB (%.1f MiB as float32)", n, cfg.gguf.name, compact / 2**20, as_f32 / 2**20)


def native_kernels(cfg: RankConfig, device: torch.device) -> cpu_native.NativeKernels | None:
    """The C decode kernels for a one-device CPU engine that asks for them (None when
    they cannot be built on this machine: the torch ops run, kernels/cpu_native.py logs why)."""
    if device.type != "cpu" or not (cfg.cpu_fast_path and cfg.cpu_native):
        return None
    return cpu_native.load()


def make_attention(cfg: RankConfig, device: torch.device, plan: ShardPlan | None = None, kernels=None) -> Attention:
    """The backend with every layer's spec (RoPE freqs and scale, local window, ALiBi
    slopes of this rank's query heads, soft-cap) for this cache's capacity; ``kernels``:
    CpuAttention's C decode path (native_kernels)."""
    args, layout = cfg.args, cfg.layout
    plan = plan or ShardPlan.single(args)
    if args.sliding_window and layout.window < args.sliding_window:
        log.warning("window %d is shorter than %s's own sliding window %d: its local layers see only the cached window "
                    "(cache/layout.py, local layers)", layout.window, args.name, args.sliding_window)
    specs = [replace(s, freqs=s.freqs.to(device), alibi=None if s.alibi is None else s.alibi.to(device))
             for s in layer_specs(args, layout.capacity, plan.q_lo, plan.q_hi)]
    if cfg.attention == "triton":
        try:  # checked here, at start-up, not at the first step's kernel call
            check_triton_heads(args.head_dim, plan.q_hi - plan.q_lo, plan.kv_hi - plan.kv_lo)
        except ValueError as exc:
            raise InvalidRequestError(f"{args.name}: {exc}; use attention 'torch'") from None
        return TritonAttention(layout, specs[0].freqs, specs[0].scale, specs)
    if device.type == "cpu" and cfg.cpu_fast_path and plain_attention(specs):
        return CpuAttention(layout, specs[0].freqs, specs[0].scale, kernels)  # reference semantics, lean one-token decode
    return TorchAttention(layout, specs[0].freqs, specs[0].scale, specs)


def plain_attention(specs: list) -> bool:
    """Every layer attends the same plain way (one RoPE, one scale; no local window,
    ALiBi or soft-cap): what CpuAttention's one-token path computes."""
    first = specs[0]
    return all(s.sliding_window == 0 and s.alibi is None and s.softcap == 0 and s.scale == first.scale
               and torch.equal(s.freqs, first.freqs) for s in specs)


def cpu_weight_format(model: nn.Module, cfg: RankConfig, device: torch.device, kernels=None, stored: dict | None = None) -> None:
    """Quantized weights (``cfg.quant``; CPU int8 multiplies through ``kernels`` when
    given; ``stored``: a quantized checkpoint's own), float weights in the CPU's faster
    layout (model/cpu_weights.py), and the CPU thread count."""
    if cfg.quant is not None:
        quantize_weights(model, cfg, device, kernels, stored)
    if device.type == "cpu" and cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)  # process-wide, the engine's step thread included
    if device.type == "cpu" and cfg.cpu_fast_path:
        transpose_linears(model)  # what int8 left in float: the head under lm_head_fp32


def quantize_weights(model: nn.Module, cfg: RankConfig, device: torch.device, kernels=None, stored: dict | None = None) -> None:
    """int8 on the CPU: model/cpu_weights.py; int4 on the CPU and both on CUDA:
    model/quant_linear.py; fp8 on CUDA capability 8.9+: model/fp8_linear.py.
    ``stored``: the layers' values from a quantized checkpoint (others: rounded here).
    What the device cannot run is refused here, at load."""
    name = cfg.quant.value
    if not isinstance(model, Llama):
        raise InvalidRequestError(f"quantization '{name}' serves the Llama family only, not {type(model).__name__}")
    head = not cfg.lm_head_fp32
    if cfg.quant is QuantFormat.FP8:
        reason = fp8_unsupported(device)
        if reason is not None:
            raise InvalidRequestError(f"quantization 'fp8' {reason}")
    if cfg.calibration_tokens and (cfg.quant not in (QuantFormat.INT4, QuantFormat.FP8) or cfg.quant_zero_point):
        raise InvalidRequestError(f"quant_rounding 'gptq' applies to symmetric int4 and to fp8, not to '{name}'"
                                  f"{' with quant_zero_point' if cfg.quant_zero_point else ''}")
    if cfg.smoothing is not None and (cfg.quant is not QuantFormat.FP8 or not cfg.calibration_tokens or stored is not None):
        raise InvalidRequestError(f"quant_smoothing applies to fp8 weights rounded here by quant_rounding 'gptq', not to "
                                  f"{'a checkpoint stored quantized' if stored is not None else repr(name)}")
    if device.type == "cpu" and cfg.quant is QuantFormat.INT8:
        quantize_int8(model, head=head, kernels=kernels)
        return
    if device.type == "cpu" and not cpu_int4_available():
        raise InvalidRequestError(f"quantization 'int4' on the CPU needs torch's _weight_int4pack_mm_for_cpu, "
                                  f"which torch {torch.__version__} lacks")
    if device.type == "cuda":
        try:
            import triton  # noqa: F401  (the kernels of model/quant_linear.py)
        except ImportError:
            raise InvalidRequestError(f"quantization '{name}' on {device} needs triton, which is not installed") from None
    elif device.type != "cpu":
        raise InvalidRequestError(f"quantization '{name}' runs on the CPU or CUDA, not on {device}")
    weights = stored if stored is not None else gptq_weights(model, cfg, device, make_attention) if cfg.calibration_tokens else None
    if cfg.quant is QuantFormat.FP8:
        quantize_fp8_linears(model, head=head, batched=None if cfg.fp8_activations else "triton", weights=weights,
                             act_terms=cfg.fp8_activation_terms, down_terms=cfg.fp8_down_terms)
        return
    quantize_linears(model, cfg.quant, cfg.quant_group, head=head, weights=weights, zero_point=cfg.quant_zero_point)
