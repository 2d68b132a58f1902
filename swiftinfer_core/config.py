"""User-facing configuration: validated pydantic models with bounds.

A bad value raises :class:`InvalidRequestError` (our own ``ValueError``), not
pydantic's error type, so callers need to know one exception only.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swiftinfer_core.errors import InvalidRequestError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as exc:
            msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or type(self).__name__}: {e['msg']}" for e in exc.errors())
            raise InvalidRequestError(f"invalid {type(self).__name__}: {msgs}") from None


class Device(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class DType(str, Enum):
    AUTO = "auto"  # bfloat16 on GPU, float32 on CPU
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class Quantization(str, Enum):
    AUTO = "auto"  # int8 where the CPU path is measured faster at float32's quality, else none (runner/resolve.py)
    NONE = "none"  # the weights in ``dtype``
    INT8 = "int8"  # weight-only int8, per output channel: CPU model/cpu_weights.py, CUDA model/quant_linear.py
    INT4 = "int4"  # weight-only int4, group scales: model/quant.py, model/quant_linear.py
    FP8 = "fp8"  # e4m3 weights, per output channel, CUDA capability 8.9+: model/fp8.py, model/fp8_linear.py
    GGUF = "gguf"  # the GGUF's Q8_0/Q4_0/Q4_1/Q4_K blocks kept compact, CPU float32, Llama family only: model/gguf_load.py


class QuantRounding(str, Enum):
    NEAREST = "nearest"  # every weight rounded to nearest at load (no calibration)
    GPTQ = "gptq"  # GPTQ over text the model writes itself at load (runner/calibration.py); int4 and fp8


# What a named but unbuilt format lacks: EngineConfig refuses it with this reason (none now).
_MISSING: dict[Quantization, str] = {}


class KVCacheDType(str, Enum):
    AUTO = "auto"  # the model's dtype (``dtype``)
    FP8 = "fp8"  # e4m3 rows with a float32 scale per row and KV head (cache/kv_fp8.py)


class LoadFormat(str, Enum):
    AUTO = "auto"  # the checkpoint's safetensors
    RANDOM = "random"  # random weights from config.json (speed benchmarks at any shape; output is noise)


class AttentionBackend(str, Enum):
    AUTO = "auto"  # triton on GPU, torch on CPU
    TORCH = "torch"
    TRITON = "triton"


class EngineConfig(StrictModel):
    model: str = Field("default", description="Path to a local HF checkpoint folder of a supported family (README 'Model families'), 'default' for SmolLM2-135M-Instruct or 'gemma3-270m' (fetched and converted once).")
    sink_tokens: int = Field(4, ge=0, le=64, description="Attention-sink tokens kept at the start of every cache.")
    window: int | None = Field(None, ge=1, le=1 << 20, description="Rolling window of recent tokens. Default: min(2048, trained context) - sink_tokens.")
    max_sessions: int | None = Field(None, ge=1, le=1 << 16, description="Cache slots, i.e. conversations resident at once. Default: sized from free memory (GPU) or 16 (CPU).")
    device: Device = Field(Device.AUTO, description="Where the model runs.")
    dtype: DType = Field(DType.AUTO, description="Weights, activations and KV cache dtype.")
    attention: AttentionBackend = Field(AttentionBackend.AUTO, description="Attention implementation.")
    max_batch_tokens: int = Field(2048, ge=16, le=1 << 16, description="Token budget of one scheduler step (prefill chunks plus decodes).")
    prefill_chunk: int = Field(512, ge=1, le=1 << 16, description="Largest prefill chunk of one conversation in one step.")
    prefix_cache_slots: int = Field(0, ge=0, le=256, description="Prompt prefixes shared between conversations (engine/prefix_cache.py): up to this many cache slots hold the input of recent conversations' first turns (a first input longer than sinks + window: the whole slot where it stops sharing a recent long input, usable by inputs that start with all of that prefix), and a conversation whose cache is empty (new, or rebuilt after losing its slot) copies the rows of the longest prefix its input shares with one of them (a common system prompt, tools, few-shot examples) instead of computing them; usage reports them as cached_tokens. Templates are stored in free slots only; when a conversation needs a slot and none is free, templates and idle conversations give theirs up in one least-recently-used order (a template every new conversation hits stays). 0: off.")
    prefix_cache_min_tokens: int = Field(64, ge=1, le=1 << 20, description="Shortest shared prefix worth copying, and the least a new template must add to what the templates hold.")
    max_turn_tokens: int = Field(32768, ge=1, le=1 << 22, description="Longest new input accepted in one call, in tokens.")
    cuda_graphs: bool = Field(True, description="Capture decode steps in CUDA graphs (GPU only).")
    piecewise_graphs: bool = Field(True, description="With CUDA graphs, also capture every piece of a step between its attention calls, per token-count bucket up to 512 tokens (runner/piecewise.py), so mixed and prefill steps replay graphs instead of launching ~1,000 kernels eagerly (7B shape on an H200: a warm 40-token turn beside 128 decode rows 23.4 ms against 36.3 eager, bench/results/mixed_step_7b.json). Applies to the Llama family on one device; other families and tensor-parallel engines run those steps eagerly.")
    overlap_postprocessing: bool = Field(True, description="On a GPU, make a step's streamed text (detokenizing, chunks) while the device runs the next step, for tokens that cannot end their turn by their text (turns without stop strings, once the turn's first text was sent; a turn's end token and its max_tokens-th token are handled in their own step). Each such chunk then leaves one step later; the first text does not wait. Off: every chunk leaves in its own step, after the device is idle (engine/postprocess.py).")
    split_mixed_steps: bool = Field(False, description="With CUDA graphs, run a step that mixes decode rows and prefill chunks as the decode graph plus a second, eager pass for the chunks (reads the weights twice) instead of one eager forward (engine/batch_runner.py). For side-by-side measurements.")
    gpu_memory_utilization: float = Field(0.85, gt=0.05, le=0.98, description="Share of free GPU memory the KV pool may take (with memory_share < 1: of this engine's share of the device's total memory, weights included).")
    memory_share: float = Field(1.0, gt=0, le=1, description="This engine's share of its GPU when several engines share one (Serve: AppConfig.gpu_share). Below 1 the KV pool is sized from memory_share x total memory x gpu_memory_utilization minus what this process already holds (weights), not from free memory, so engines started one after another never take each other's share; an engine whose share is not free at start is refused.")
    lm_head_fp32: bool | None = Field(None, description="Keep the LM head in float32 under bf16/fp16 or quantized weights: exact-er logits for sampling, at the cost of reading the head in 4 (or 2) bytes per weight every step. On a CUDA GPU with bfloat16 (Llama family, one device) the float32 head is held as two bfloat16 halves W = hi + lo and multiplied as three bfloat16 tensor-core GEMMs with float32 accumulation (model/split_head.py): the same bytes, about float32's accuracy, instead of a float32 GEMM without tensor cores (6.8 ms of a 28.7 ms step at 256 rows on the Llama-3.1-8B shape, bench/results/mixed_step_8b.json). None: true, except where quantization 'auto' picks int8 on the CPU: there the head is int8 too (the faster of the two formats measured, both within 1% of float32's perplexity: bench/results/cpu_int8_quality_decode.json).")
    cpu_fast_path: bool = Field(True, description="On the CPU: keep linear weights transposed in memory ([in, out] storage, the same [out, in] tensor to the model; MKL's matrix-vector product reads it ~1.4x faster) and decode one-token steps through kernels/torch_decode.py instead of the reference attention. False runs the plain reference path (side-by-side benchmarks, numerics checks). No effect on a GPU.")
    cpu_native_kernels: bool = Field(True, description="On the CPU with cpu_fast_path: compile kernels/cpu_native_*.c once per machine (the C compiler in $CC, gcc or cc; cached under ~/.cache/swiftinfer/native) and decode one-token steps through it: attention in one call per sequence and layer, and, with quantization 'int8', a whole layer per call (int8 products over inputs rounded to 16-bit fixed point per row, with the RMSNorm, SwiGLU and residual adds folded in: model/cpu_decode.py); prefill chunks of int8 weights go through MKL's float32 GEMM over the widened weight. Without a compiler the torch ops run instead (logged). False: torch ops only (side-by-side benchmarks).")
    cpu_threads: int | None = Field(None, ge=1, le=1024, description="Torch intra-op threads when the model runs on the CPU (process-wide: torch.set_num_threads at load). None: torch's default, one per core. On a box shared with other busy processes one thread decoded 4-6x faster than two (bench/results/cpu_decode_profile.md).")
    quantization: Quantization = Field(Quantization.NONE, description="Weight format of every linear layer (the LM head too unless lm_head_fp32), quantized at load from the float checkpoint; Llama family, tp_size 1; embeddings and norms stay in dtype. A checkpoint quantized already in the compressed-tensors format (llm-compressor's w4a16 int4 or FP8; model/ct_checkpoint.py) is served in its own codes and scales: 'none' and 'auto' take its format, naming another format is refused. 'auto' (serve_config.yaml's choice): 'int8' with an int8 LM head for a Llama-family model in float32 on one CPU (SmolLM2-135M: ~2.5x the float32 decode speed, perplexity within 0.2% of float32: docs/quantization.md 'Decode speed on the CPU'), 'none' anywhere else (GPUs, other families, tensor parallelism, bf16). 'int8': symmetric, one scale per output channel; on the CPU torch's _weight_int8pack_mm (bfloat16 activations, float32 residual stream), on CUDA the Triton kernels of kernels/quant_gemv.py (one row) and quant_gemm.py (batches) in dtype. 'int4': symmetric, one scale per quant_group inputs, two weights per byte (model/quant.py; quant_zero_point: a float16 scale and min per group); CUDA: the same Triton kernels; CPU: torch's _weight_int4pack_mm_for_cpu. 'fp8': e4m3 weights with one float32 scale per output channel (amax / 448; model/fp8.py), CUDA GPUs of compute capability 8.9 or newer only (Ada, Hopper; refused on the CPU and on older GPUs at start): one row (batch-1 decode) through the Triton GEMV of kernels/fp8_gemv.py (weight-only), more rows through torch._scaled_mm on FP8 tensor cores with the activations quantized to e4m3 per row on the fly (bf16 dtype; elsewhere the weight-only Triton GEMM of kernels/fp8_gemm.py). 'gguf': the linear layers (and a block-stored embedding and LM head) as the model's own GGUF stores them, kept compact instead of expanded to float32: Q8_0, Q4_0, Q4_1 and Q4_K blocks (codes plus a scale, and a min, per 32 inputs; model/gguf_blocks.py), multiplied from the codes per group without expanding the matrix (model/gguf_linear.py): Q8_0/Q4_0/Q4_1 through the C kernel of kernels/cpu_native_gguf.c (AVX2/FMA; with cpu_native_kernels), Q4_K and everything without the C kernels through torch ops (several times slower). Needs a Llama-family model folder holding the GGUF it was converted from (the default model: fetched into its folder, pinned; model/fetch.py), on the CPU in float32, tp_size 1; the LM head is the file's unless lm_head_fp32 is true. Refused: CUDA (no GPU kernels for these blocks), other dtypes, other families, tensor parallelism, load_format 'random', and GGUF layers in other types (Q6_K, Q5_*, ...). The default model (Q4_1 layers, a Q8_0 embedding tied to the head) holds 92.0 MiB of these weights at rest against 621 MiB in the float32 engine (layers 63.3 MiB against 405; embedding and head 28.7 MiB once against 108 MiB twice); logits within 1e-4 of the largest of the float32 model converted from the same file, the same greedy tokens (tests/model/test_gguf_model.py). Loading reads the float checkpoint first (peak: both). Speed, one conversation, one thread on the project's 2-core EPYC under load from other processes: 17.9 tokens/s against 13.3 for 'none' (float32) and 60.5 for 'auto' (int8), 3.2 with torch ops only (bench/results/gguf_decode_cpu.json): smaller, not faster than 'auto'.")
    quant_group: int = Field(128, ge=32, le=1024, description="int4 only: consecutive inputs of a row that share one scale; a power of two. Smaller groups follow outliers more closely at more scale bytes (2 bytes per group).")
    quant_rounding: QuantRounding = Field(QuantRounding.NEAREST, description="How int4 (symmetric) and fp8 weights are chosen at load. 'nearest': each weight rounded to its format's nearest value. 'gptq': GPTQ (Frantar et al. 2022) in activation order, calibrated on quant_calibration_tokens tokens the float model samples itself at load (no corpus; runner/calibration.py): each layer's rounding error is spread over its not-yet-rounded inputs through the inverse of the calibration inputs' Hessian, so the layer's output, not its weight, stays close; int4 groups also get the activation-weighted clip search. Same formats and kernels, so the same speed; load takes longer (the default model in int4 on the 2-core CPU box: 70 s instead of a few) and holds one decoder layer's [K, K] Hessians at a time (runner/layerwise.py; Llama-3.1-8B shape: 1.0 GiB in float32 on a GPU, from its shapes; not yet measured there). Measured before that, with every layer's Hessians at once and torch's column loop, on an H200 in fp8: 30.5 GiB of Hessians, peak 59.5 GiB against 22.8 GiB and 141 s against 3.5 s rounding to nearest (bench/results/gptq_load_8b_gpu.json); a GPU now rounds through a Triton kernel (kernels/gptq_block.py), whose time there is not measured yet. SmolLM2-135M, emulated, 4,000 tokens of the plays, StreamingLLM 4+256 / 4+1020, 2,048 self-generated tokens: fp8 perplexity x1.001 / x1.004 of float32 in one draw (nearest: x1.025 / x1.025; other seeds and settings x1.003-1.014 at 4+256, mean x1.009: bench/results/quant_quality_cpu_gptq_draws.json), x1.006 / x1.012 with the batched path's e4m3 activations (nearest: x1.029 / x1.031); int4 group 128 x1.19 / x1.18 (nearest: x1.55 / x1.57; other seeds x1.15-1.19) (bench/results/quant_quality_cpu_gptq_self.json). Those emulations run a float32 model; in bf16, the GPU engine's dtype, fp8 GPTQ gives x1.008 of the bf16 model (nearest x1.014) and x1.016 with e4m3 activations (nearest x1.019), as the H100's real path measured (x1.016-1.020; 3,000 tokens at 4+1020, bench/results/quant_quality_cpu_gpu_span_bf16.json); fp8_activations false keeps batched products at the weights' own quality.")
    quant_calibration_tokens: int = Field(2048, ge=256, le=16384, description="quant_rounding 'gptq': tokens the model generates to calibrate on, in sequences of 256 from random first tokens, sampled at temperature 1 with the engine's seed.")
    quant_calibration_file: Path | None = Field(None, description="quant_rounding 'gptq': calibrate on the first quant_calibration_tokens tokens of this UTF-8 text file (text like what the deployment will serve) instead of text the model writes itself; read and tokenized at load, run as one text through a 4+256 StreamingLLM cache. Emulated on the default model, int4 group 128: x1.085 of float32 calibrated on 2,048 tokens of the plays and evaluated on other plays, against x1.15-1.19 self-generated; fp8 gained nothing measurable (bench/results/quant_quality_cpu_gptq_plays.json, _draws.json).")
    fp8_activations: bool = Field(True, description="quantization 'fp8' only (or an FP8 compressed-tensors checkpoint under 'none'/'auto'; anything else is refused at load): how products of 65 rows or more (prefill chunks, large decode batches) run; 2-64 rows always take the weight-only split-K Triton GEMM (kernels/fp8_gemm.py, activations kept in dtype), and one row the GEMV. True: torch._scaled_mm on FP8 tensor cores with each activation row rounded to e4m3 (kernels/fp8_scaled_mm.py). False: the GEMM at every size, for the quality of the weights alone. Decode step time of the weight products against bf16's, Llama-2-7B / Llama-3.1-8B shapes, one H100 run (bench/results/fp8_decode_crossover_h100.json, fp8_decode_splitk_h100.json): the GEMM 1.57x / 1.58x at 8 rows, 1.50x / 1.47x at 32, 1.38x / 1.25x at 64, 0.74x / 0.80x at 96, 0.71x / 0.78x at 128, 0.64x (8B) at 512; _scaled_mm 1.16x / 1.13x at 8 rows, 1.19x / 1.23x at 64, 1.27x / 1.30x at 128, 1.49x (8B) at 512. Emulated on the CPU in bf16 (the GPU engine's dtype; the default model, 3,000 tokens of the plays, 4+1020, 2,048 self-generated calibration tokens, one seed): with quant_rounding 'gptq' x1.008 of the bf16 model's perplexity with activations in dtype against x1.016 with e4m3 activations (nearest rounding: x1.014 and x1.019; the H100's real path gave x1.019 and x1.016 for the e4m3 pair); bench/results/quant_quality_cpu_gpu_span_bf16.json. On the H100's real path over two calibration seeds (bench/results/fp8_gptq_gpu_smooth_h100.json): GPTQ x1.0074 / x1.0129 with activations in dtype against x1.0163 / x1.0200 in e4m3. fp8_activation_terms 2 keeps _scaled_mm and most of that quality.")
    fp8_activation_terms: int = Field(1, ge=1, le=2, description="quantization 'fp8' with fp8_activations true: how many e4m3 terms each activation row of the _scaled_mm products (65 rows or more) is split into. 1: the row rounded to e4m3 over its amax (each element within 2^-4 of itself). 2: that, plus a second e4m3 row of what the first missed over its own amax, the two stacked into one _scaled_mm over twice the rows (the weight read once) and the halves added (kernels/fp8_scaled_mm.py two_terms), so the activations are within about 2^-8 of themselves, near bf16's 2^-9, at up to twice the tensor-core work. Emulated on the CPU in bf16 (the default model, 3,000 tokens of the plays, 4+1020, quant_rounding 'gptq', one seed; bench/results/quant_quality_cpu_act2terms_bf16.json): perplexity x1.0085 of the bf16 model against x1.0162 with one term and x1.0079 for the weights alone (nearest rounding: x1.0148, x1.0190, x1.0143). The cost, one H100, one Llama-2-7B decode step's weight products against bf16's (bench/results/fp8_decode_two_terms_h100.json): 0.89x at 64 rows, 0.82x at 128, 0.71x at 256, 0.67x at 512 and 2,048, where one term gives 1.17-1.46x; so 2 trades fp8's speed for its quality, and stays faster than fp8_activations false beyond 64 rows (0.70-0.73x at 80-128). On an H100's real path (the same span, two calibration seeds; bench/results/fp8_gptq_gpu_terms_h100.json): GPTQ x1.0059 / x1.0131 of bf16 against one term's x1.0163 / x1.0200, the weights' own quality.")
    fp8_down_activation_terms: int | None = Field(None, ge=1, le=2, description="quantization 'fp8' with fp8_activations true: e4m3 terms of the MLP down projection's input alone (the SwiGLU product, where a few channels carry the massive activations; w2 in the engine's Llama) on the _scaled_mm path, as fp8_activation_terms says for it. None: fp8_activation_terms. 2 with fp8_activation_terms 1 spends the second term on one product in four: emulated on the CPU in bf16 (the default model, 3,000 tokens of the plays, 4+1020, quant_rounding 'gptq', one seed; bench/results/quant_quality_cpu_w2terms_bf16.json) perplexity x1.0137 of the bf16 model against x1.0162 with one term everywhere, x1.0085 with two everywhere and x1.0079 for the weights alone: the down projections' input carries under a third of what e4m3 activations cost, unlike float32's emulation, where leaving that input unrounded gave most of it back (docs/quantization.md). On an H100's real path (two calibration seeds, bench/results/fp8_gptq_gpu_terms_h100.json): x1.0113 / x1.0184 against x1.0163 / x1.0200 for one term everywhere. The whole decode step at 4+2044 (bench/results/formats_step_*_h100.json): 0.91-0.96x one term's tokens/s.")
    quant_smoothing: float | None = Field(None, ge=0.05, le=0.95, description="quantization 'fp8' with quant_rounding 'gptq' only: SmoothQuant's migration strength alpha (Xiao et al. 2023; 0.5 is the usual). Each linear's input channel j is divided by s_j = amax_x[j]^alpha / amax_w[j]^(1 - alpha) (amax over the calibration text) and its weight column multiplied by s_j before rounding; the division is folded into the RMSNorm weights, the up projection's rows and the value projection's rows (model/smooth.py), so the kernels and the step are unchanged. It flattens the activations that _scaled_mm rounds to e4m3 per row, and the weights' columns. Emulated on the CPU in bf16 (the default model, 3,000 tokens of the plays, 4+1020, 2,048 self-generated calibration tokens, one seed; bench/results/quant_quality_cpu_smooth_bf16*.json): perplexity x1.0035 of the bf16 model with alpha 0.5 against x1.0079 without for the weights alone (fp8_activations false, and batches under 65 rows), x1.0117 against x1.0162 with e4m3 activations, a gain that is not robust (alpha 0.35 and 0.65 gave x1.0177 and x1.0200 there). On an H100's real path (same span, two calibration seeds; bench/results/fp8_gptq_gpu_smooth_h100.json): the weights alone x1.0038 / x1.0128 against x1.0074 / x1.0129 unsmoothed, with e4m3 activations x1.0087 / x1.0193 against x1.0163 / x1.0200: a gain for one seed, none for the other. None: off. KV snapshots then move only between engines with the same setting (the cached values are scaled).")
    quant_zero_point: bool = Field(False, description="int4 only: the asymmetric variant, per group a float16 scale AND a float16 min (w = nibble * scale + min, nibbles 0..15), quantized at load by min/max per group; 2 more bytes per group than the symmetric format, whose bfloat16 scale and codes -7..7 stay the default (model/quant.py). With quant_group 32 it is GGUF's Q4_1: the default model's float32 checkpoint (its Q4_1 file dequantised) comes back bit-exact (every weight of its 210 decoder linears), so the emulated perplexity (3,000 tokens of the plays, StreamingLLM 4+256) is float32's (x1.000) against x1.291 for symmetric group 32; at group 128 x1.509 against x1.551 (bench/results/quant_quality_cpu_zp.json). That measures fidelity to a model already stored in Q4_1, not int4's cost on a float-trained checkpoint (not measured). CUDA: the Triton kernels with a min term; CPU: torch's _weight_int4pack_mm_for_cpu with zero = min + 8 * scale, where the op rounds scale and zero to bfloat16 (as it does x).")
    load_format: LoadFormat = Field(LoadFormat.AUTO, description="'random' skips the weights: for benchmarking a shape from its config.json alone.")
    tp_size: int = Field(1, ge=1, le=64, description="Tensor-parallel ranks for one engine.")
    seed: int = Field(0, ge=0, description="Default sampling seed.")
    chat_template: str | None = Field(None, min_length=1, max_length=1 << 20, description="A Jinja chat template used instead of the tokenizer's own (conversation/chat_format.py), by the engine and the HTTP edge alike (e.g. one with tool syntax: a template that references `tools` renders the request's tools into the prompt, and its tool calls are parsed back: conversation/tool_syntax.py). None: the tokenizer's template.")
    kv_cache_dtype: KVCacheDType = Field(KVCacheDType.AUTO, description="Storage of the KV cache. 'auto': the model's dtype. 'fp8': float8 e4m3 with one power-of-two float32 scale per cached token and KV head, computed as the token is written (no calibration; cache/kv_fp8.py): head_dim + 4 bytes per row and head instead of 2 x head_dim in bf16, so about twice the conversations (slots) fit in the same GPU memory (1.94x at head_dim 128). Attention dequantises as it reads; a turn's own tokens are attended unquantised. SmolLM2-135M on 4,096 tokens of the plays, every token decoded one at a time: perplexity +0.72% (4+256) and +0.64% (4+1020) over the float32 cache, top-1 agreement 95% (bench/results/fp8_kv_quality_cpu.json). Triton kernels on GPUs of compute capability 8.9+ (Ada, Hopper); torch ops on the CPU. KV snapshots move only between engines of the same kv_cache_dtype (others rebuild the conversation from its log).")
    step_trace: str | None = Field(None, min_length=1, max_length=4096, description="Diagnostics: append one JSON line per engine step (what it ran, which path: graph / piecewise / eager, host milliseconds of scheduling, the model run and postprocessing) and one per turn at its first token (queue wait, steps its input took) to this path, with the process id before the suffix (engine/step_trace.py; bench/step_trace_report.py summarises). None: no trace.")
    allow_control_tokens_in_content: bool = Field(False, description="UNSAFE, for trusted clients only. When true, control-token spellings inside message content (e.g. '<|im_end|>\\n<|im_start|>system') are encoded as the control tokens themselves, so a client can forge turns and roles the chat template never wrote. Default false: content is always encoded as plain text.")

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.window is not None and self.sink_tokens >= self.window:
            raise ValueError(f"sink_tokens ({self.sink_tokens}) must be smaller than window ({self.window})")
        q = self.quantization
        if q in _MISSING:
            raise ValueError(f"quantization '{q.value}' is not available: {_MISSING[q]}; use 'int8' or 'int4'")
        if q is Quantization.GGUF and (self.device is Device.CUDA or self.dtype not in (DType.AUTO, DType.FLOAT32)
                                       or self.load_format is LoadFormat.RANDOM):
            raise ValueError("quantization 'gguf' runs on the CPU in float32 only (device 'cpu' or 'auto' on a machine "
                             "without a GPU, dtype 'auto' or 'float32'; no GPU kernels for GGUF blocks) and reads the "
                             "checkpoint's GGUF (not load_format 'random')")
        if q is Quantization.FP8 and self.device is Device.CPU:
            raise ValueError("quantization 'fp8' needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper), "
                             "not the CPU; on the CPU use 'int8'")
        if q not in (Quantization.NONE, Quantization.AUTO) and self.tp_size > 1:
            raise ValueError(f"quantization '{q.value}' runs with tp_size 1 only (quantized layers are not sharded)")
        if not self.fp8_activations and q not in (Quantization.FP8, Quantization.NONE, Quantization.AUTO):
            raise ValueError(f"fp8_activations applies to quantization 'fp8' only, not '{q.value}'")
        for terms in ("fp8_activation_terms", "fp8_down_activation_terms"):  # set away from its default
            if getattr(self, terms) != type(self).model_fields[terms].default and (
                    not self.fp8_activations or q not in (Quantization.FP8, Quantization.NONE, Quantization.AUTO)):
                raise ValueError(f"{terms} applies to quantization 'fp8' with fp8_activations true, not "
                                 f"'{q.value}' with fp8_activations {str(self.fp8_activations).lower()}")
        if self.quant_smoothing is not None and (q is not Quantization.FP8 or self.quant_rounding is not QuantRounding.GPTQ):
            raise ValueError(f"quant_smoothing applies to quantization 'fp8' with quant_rounding 'gptq' (its calibration "
                             f"pass gives the activation statistics), not '{q.value}' with '{self.quant_rounding.value}'")
        if self.quant_zero_point and q is not Quantization.INT4:
            raise ValueError(f"quant_zero_point applies to quantization 'int4' only, not '{q.value}'")
        if self.quant_rounding is QuantRounding.GPTQ and (q not in (Quantization.INT4, Quantization.FP8) or self.quant_zero_point):
            raise ValueError(f"quant_rounding 'gptq' applies to quantization 'int4' (without quant_zero_point) and 'fp8', "
                             f"not '{q.value}'{' with quant_zero_point' if self.quant_zero_point else ''}")
        if self.quant_calibration_file is not None and self.quant_rounding is not QuantRounding.GPTQ:
            raise ValueError("quant_calibration_file is the calibration text of quant_rounding 'gptq'; set that too")
        if self.quant_group & (self.quant_group - 1):
            raise ValueError(f"quant_group must be a power of two, got {self.quant_group}")
        return self


class Grammar(StrictModel):
    """Structured output: the reply must match this (engine/grammar.py)."""

    kind: Literal["json_object", "json_schema"] = Field(description="'json_object': any JSON object; 'json_schema': the given schema.")
    json_schema: str | None = Field(None, max_length=1 << 20, description="The JSON schema as JSON text (kind 'json_schema' only), enforced strictly: objects take no properties the schema does not allow.")
    before: str = Field("", max_length=256, description="Fixed text the reply starts with, before the JSON (a template's tool-call opening, e.g. '<tool_call>\\n').")
    after: str = Field("", max_length=256, description="Fixed text after the JSON, before the reply's end (e.g. '\\n</tool_call>').")

    @model_validator(mode="after")
    def _check(self) -> Grammar:
        if (self.kind == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with kind 'json_schema' and only then")
        return self


class SamplingParams(StrictModel):
    max_tokens: int = Field(256, ge=1, le=1 << 20, description="Largest number of tokens to generate.")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 means greedy.")
    top_k: int = Field(0, ge=0, le=1 << 20, description="Keep the k most likely tokens; 0 disables.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(None, ge=0, le=(1 << 63) - 1, description="Per-request seed; reproducible sampling.")
    stop: list[str] = Field(default_factory=list, max_length=16, description="Stop strings; the output ends before the first match.")
    ignore_eos: bool = Field(False, description="Keep generating past the end-of-sequence token.")
    # Penalties and bias: see engine/penalties.py (penalties count the tokens the cache can see).
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="Subtracted from the logit of every token the cache holds.")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="Subtracted once per occurrence of a token the cache holds.")
    repetition_penalty: float = Field(1.0, ge=0.01, le=10.0, description="Divides positive (multiplies negative) logits of tokens the cache holds; 1 disables.")
    logit_bias: dict[int, float] = Field(default_factory=dict, max_length=1024, description="Token id -> bias added to its logit, in [-100, 100].")
    min_tokens: int = Field(0, ge=0, le=1 << 20, description="End tokens are masked until this many tokens were generated.")
    logprobs: bool = Field(False, description="Return the log-probability of each sampled token.")
    top_logprobs: int = Field(0, ge=0, le=20, description="Also return this many most likely tokens per position (needs logprobs).")
    prompt_logprobs: int | None = Field(None, ge=0, le=20, description="Score the input tokens too, with this many most likely tokens per position; None: off.")
    grammar: Grammar | None = Field(None, description="Constrain the reply to a grammar (structured output); None: free text.")
    n: int = Field(1, ge=1, le=128, description="Choices to generate from one prefill of the input (engine/choices.py). On a session, choice 0 continues the conversation; the others are returned and discarded. Each choice needs its own cache slot while the turn runs.")

    @model_validator(mode="after")
    def _check(self) -> SamplingParams:
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if any(not -100.0 <= v <= 100.0 for v in self.logit_bias.values()) or any(t < 0 for t in self.logit_bias):
            raise ValueError("logit_bias: token ids must be >= 0 and biases in [-100, 100]")
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) exceeds max_tokens ({self.max_tokens})")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs")
        if self.grammar is not None and (self.min_tokens or self.ignore_eos):
            # the grammar's end is an end token: masking it could leave no token allowed
            raise ValueError("min_tokens and ignore_eos cannot be combined with structured output")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
