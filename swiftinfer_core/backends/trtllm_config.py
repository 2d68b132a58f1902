"""Our configuration -> TensorRT-LLM's LLM API arguments, as plain data.

Everything here is pure (dicts and dataclasses), so it is tested without
TensorRT-LLM; ``trtllm.py`` turns the dicts into the installed release's
``KvCacheConfig``, ``BuildConfig`` and ``SamplingParams`` objects.

The cache: our ``sink_tokens`` + ``window`` (the window excludes the sinks) is
TensorRT-LLM's ``sink_token_length`` + ``max_attention_window`` (which counts
the sinks), with the ``streamingllm`` build plugin on. StreamingLLM needs the
cyclic KV cache, so KV block reuse and chunked context stay off; the context
phase is then dense over the whole prompt (TensorRT-LLM's documented
StreamingLLM behaviour), so one prompt must fit ``max_num_tokens``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.config import DType, EngineConfig, SamplingParams, StrictModel
from swiftinfer_core.errors import InvalidRequestError

DEFAULT_MAX_BATCH = 64


class TrtllmOptions(StrictModel):
    """Knobs of the TensorRT-LLM backend that ``EngineConfig`` does not cover."""

    max_batch_size: int | None = Field(None, ge=1, le=4096, description="Requests the engine runs at once. Default: EngineConfig.max_sessions, else 64.")
    max_reply_tokens: int = Field(4096, ge=1, le=1 << 20, description="Longest reply of one turn; with the prompt bound it sets the engine's max_seq_len.")
    tokenizer: str | None = Field(None, description="Tokenizer folder. Default: the model folder (required for a prebuilt engine folder).")


@dataclass(frozen=True)
class Checkpoint:
    """What the model folder is: a Hugging Face checkpoint (TensorRT-LLM builds
    the engine with our build config) or a prebuilt engine (checked for the plugin)."""

    path: Path
    prebuilt_engine: bool
    max_position: int
    eos_ids: tuple[int, ...]


def _eos(cfg: dict) -> tuple[int, ...]:
    eos = cfg.get("eos_token_id")
    return tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())


def inspect_checkpoint(path: Path) -> Checkpoint:
    """Read ``config.json`` and refuse folders that would serve without sinks or with wrong RoPE."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise InvalidRequestError(f"{path}: no config.json (need a Hugging Face checkpoint or a TensorRT-LLM engine folder)")
    cfg = json.loads(cfg_file.read_text())
    if "build_config" in cfg:  # trtllm-build output: its plugins are fixed at build time
        if not cfg["build_config"].get("plugin_config", {}).get("streamingllm", False):
            raise InvalidRequestError(
                f"{path} is a TensorRT-LLM engine built without the streamingllm plugin; it would ignore the sinks. "
                "Rebuild it with `trtllm-build --streamingllm enable`, or point `model` at the Hugging Face checkpoint."
            )
        pretrained = cfg.get("pretrained_config", {})
        return Checkpoint(path, True, int(pretrained.get("max_position_embeddings", 2048)), _eos(pretrained))
    if "rope_parameters" in cfg and "rope_theta" not in cfg:
        raise InvalidRequestError(
            f"{path}/config.json keeps RoPE settings in 'rope_parameters' (transformers >= 5 format), which "
            "TensorRT-LLM 0.15-1.0 does not read (it would fall back to rope_theta=10000); use a checkpoint "
            "saved in the transformers 4.x format (top-level 'rope_theta')."
        )
    return Checkpoint(path, False, int(cfg.get("max_position_embeddings", 2048)), _eos(cfg))


def stream_layout(cfg: EngineConfig, ckpt: Checkpoint) -> StreamLayout:
    """Same default as the native engine: window = min(2048, trained context) - sinks."""
    window = cfg.window if cfg.window is not None else min(2048, ckpt.max_position) - cfg.sink_tokens
    if cfg.sink_tokens >= window:
        raise InvalidRequestError(f"sink_tokens ({cfg.sink_tokens}) must be smaller than window ({window})")
    return StreamLayout(cfg.sink_tokens, window)


@dataclass(frozen=True)
class EngineLimits:
    """Build-time bounds of one request. A round's prompt is at most
    sinks + window (the resubmitted cache) + one turn."""

    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int

    def reply_budget(self, prompt_len: int, wanted: int) -> int:
        return max(1, min(wanted, self.max_seq_len - prompt_len))


def engine_limits(cfg: EngineConfig, opts: TrtllmOptions, layout: StreamLayout) -> EngineLimits:
    max_input = layout.capacity + cfg.max_turn_tokens
    return EngineLimits(
        max_batch_size=opts.max_batch_size or cfg.max_sessions or DEFAULT_MAX_BATCH,
        max_input_len=max_input,
        max_seq_len=max_input + opts.max_reply_tokens,
        max_num_tokens=max(cfg.max_batch_tokens, max_input),  # no chunked context: a whole prompt per step
    )


def kv_cache_kwargs(cfg: EngineConfig, layout: StreamLayout) -> dict:
    return {
        "max_attention_window": [layout.capacity],  # one value for every layer; counts the sinks
        "sink_token_length": layout.sinks,
        "free_gpu_memory_fraction": cfg.gpu_memory_utilization,
        "enable_block_reuse": False,  # cyclic cache: blocks are overwritten in place
    }


def build_kwargs(limits: EngineLimits) -> dict:
    return dataclasses.asdict(limits)


def llm_kwargs(cfg: EngineConfig, opts: TrtllmOptions, ckpt: Checkpoint) -> dict:
    """Arguments of ``LLM(...)`` other than the config objects."""
    return {
        "model": str(ckpt.path),
        "tokenizer": opts.tokenizer or str(ckpt.path),
        "tensor_parallel_size": cfg.tp_size,
        "dtype": "auto" if cfg.dtype is DType.AUTO else cfg.dtype.value,
    }


def sampling_kwargs(params: SamplingParams, max_tokens: int, eos_ids: tuple[int, ...]) -> dict:
    """Our SamplingParams -> TensorRT-LLM SamplingParams fields. Text comes from
    our own detokenizer (``detokenize=False``); stop strings are passed on too so
    the engine stops by itself on releases that cannot abort a request."""
    if not eos_ids:
        raise InvalidRequestError("the model declares no end-of-sequence token")
    refused = [name for name, on in (
        ("presence_penalty", params.presence_penalty != 0.0), ("frequency_penalty", params.frequency_penalty != 0.0),
        ("repetition_penalty", params.repetition_penalty != 1.0), ("logit_bias", bool(params.logit_bias)),
        ("min_tokens", params.min_tokens > 0), ("logprobs", params.logprobs), ("prompt_logprobs", params.prompt_logprobs is not None),
        ("structured output (response_format, tools)", params.grammar is not None),
        ("n", params.n > 1),  # one request per round; several choices would need the adapter to fork its resubmission
    ) if on]
    if refused:  # the adapter does not map them (yet): refused, never silently dropped
        raise InvalidRequestError(f"unsupported by the TensorRT-LLM backend: {', '.join(refused)}")
    kw: dict = {"max_tokens": max_tokens, "end_id": eos_ids[0], "pad_id": eos_ids[0], "detokenize": False}
    kw["ignore_eos"] = params.ignore_eos
    if len(eos_ids) > 1 and not params.ignore_eos:
        kw["stop_token_ids"] = list(eos_ids[1:])
    if params.stop:
        kw["stop"] = list(params.stop)
    if params.greedy:
        kw["top_k"] = 1  # the runtime samples with temperature > 0 only; top-1 is greedy
    else:
        kw["temperature"] = params.temperature
        kw["top_p"] = params.top_p
        if params.top_k:
            kw["top_k"] = params.top_k
    if params.seed is not None:
        kw["seed"] = params.seed
    return kw


# our field -> names it has had in TensorRT-LLM's SamplingParams, newest first
FIELD_NAMES: dict[str, tuple[str, ...]] = {"seed": ("seed", "random_seed")}


def fit_fields(cls: type, kwargs: dict) -> dict:
    """Rename fields to what the installed ``SamplingParams`` dataclass calls them;
    a field it has under no known name is an error, never silently dropped."""
    have = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for name, value in kwargs.items():
        candidates = FIELD_NAMES.get(name, (name,))
        match = next((c for c in candidates if c in have), None)
        if match is None:
            raise InvalidRequestError(f"this TensorRT-LLM release's {cls.__name__} has no field {name!r} (tried {list(candidates)})")
        out[match] = value
    return out
