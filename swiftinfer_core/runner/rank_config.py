"""What one rank needs to build its ModelRunner, as plain picklable values.

``runner/resolve.py:rank_config`` fills it once from an EngineConfig on rank 0
(model name -> folder, config.json -> ModelArgs, sinks/window -> StreamLayout,
"auto" -> device and dtype); tensor-parallel workers receive it pickled and
never resolve anything again. Benches write it directly. No pydantic here: the
GPU image that runs the tensor-parallel bench and test has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal

import torch

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.model.args import ModelArgs
from swiftinfer_core.model.quant import QuantFormat


class Weights(str, Enum):
    """Where the weights come from (runner/weights.py)."""

    CHECKPOINT = "checkpoint"  # the safetensors of ``path`` (a TP rank reads only its slices)
    RANDOM = "random"  # EngineConfig.load_format 'random': normal(0, 0.02) per rank's parameters
    SEEDED = "seeded"  # one random Llama drawn per tensor name from ``seed``: the same model on every rank


@dataclass(frozen=True)
class RankConfig:
    args: ModelArgs
    layout: StreamLayout
    device_type: Literal["cpu", "cuda"]  # a CUDA rank uses its current device (set by its launcher)
    dtype: torch.dtype
    weights: Weights = Weights.CHECKPOINT
    path: Path | None = None  # checkpoint folder (also names the model in logs)
    seed: int = 0  # RANDOM and SEEDED weights
    attention: Literal["triton", "torch"] = "torch"  # resolved: no "auto"
    slots: int | None = None  # KV cache slots; None: sized from free memory (GPU) or CPU_DEFAULT_SLOTS
    lm_head_fp32: bool = False  # the LM head in float32 under bf16/fp16 weights
    quant: QuantFormat | None = None  # weight-only int8/int4 linears (one device); the head too unless lm_head_fp32
    quant_group: int = 128  # int4 group size (model/quant.py)
    quant_zero_point: bool = False  # int4 with a float16 min per group (model/quant.py)
    fp8_activations: bool = True  # fp8: batched rows through _scaled_mm in e4m3 (False: the weight-only Triton GEMM)
    fp8_activation_terms: int = 1  # fp8 through _scaled_mm: e4m3 terms per activation row (2: hi + what it misses)
    fp8_down_terms: int | None = None  # the same for the MLP down projections' input (w2); None: fp8_activation_terms
    calibration_tokens: int = 0  # > 0: int4/fp8 rounded by GPTQ over this many self-generated tokens (runner/calibration.py)
    calibration_ids: tuple[int, ...] | None = None  # GPTQ over these token ids (quant_calibration_file) instead
    smoothing: float | None = None  # with calibration: SmoothQuant alpha folded in before rounding (model/smooth.py)
    cpu_fast_path: bool = False  # CPU: transposed linears (one device) and CpuAttention where every layer is plain
    cpu_threads: int | None = None  # torch threads of a one-device CPU engine (process-wide)
    cpu_native: bool = False  # with cpu_fast_path: the C decode kernels (kernels/cpu_native.py) where they build
    gemv_decode: bool = False  # GPU batch-1 decode through model/fused_decode.py where the model allows it
    fused_elementwise: bool = False  # GPU: Llama's norms, residual adds and SiLU*up as Triton kernels (Llama.fuse_elementwise)
    memory_share: float = 1.0  # EngineConfig.memory_share (runner/kv_slots.py)
    gpu_memory_utilization: float = 0.85
    split_mixed: bool = False  # EngineConfig.split_mixed_steps
    kv_dtype: torch.dtype | None = None  # KV cache storage (torch.float8_e4m3fn: cache/kv_fp8.py); None: ``dtype``
    gguf: Path | None = None  # quantization 'gguf': the GGUF whose blocks replace the linears (model/gguf_load.py)
    prequantized: bool = False  # the checkpoint stores ``quant``'s codes and scales (model/ct_checkpoint.py)

    @property
    def cache_dtype(self) -> torch.dtype:
        """The KV pool's storage dtype."""
        return self.kv_dtype or self.dtype

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else self.args.name
