"""TensorRT-LLM adapter: translation of our config into LLM API arguments (pure data, no TensorRT-LLM)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from swiftinfer_core.backends.trtllm_config import (
    DEFAULT_MAX_BATCH, Checkpoint, TrtllmOptions, build_kwargs, engine_limits, fit_fields, inspect_checkpoint,
    kv_cache_kwargs, llm_kwargs, sampling_kwargs, stream_layout,
)
from swiftinfer_core.config import EngineConfig, SamplingParams
from swiftinfer_core.errors import InvalidRequestError


def _hf_dir(tmp_path: Path, **cfg) -> Path:
    base = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 4096,
            "rope_theta": 10000.0, "eos_token_id": 2}
    (tmp_path / "config.json").write_text(json.dumps({**base, **cfg}))
    return tmp_path


def test_trtllm_hf_checkpoint_is_read(tmp_path):
    ck = inspect_checkpoint(_hf_dir(tmp_path, eos_token_id=[7, 9]))
    assert ck == Checkpoint(tmp_path, False, 4096, (7, 9))


def test_trtllm_refuses_transformers5_rope_format(tmp_path, model_dir):
    # a config with rope_parameters only: TensorRT-LLM 0.15-1.0 would silently use theta 10000
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.pop("rope_theta", None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidRequestError, match="rope_parameters"):
        inspect_checkpoint(tmp_path)
    # the converted default model also carries the top-level key (model/fetch.py), so it is accepted
    inspect_checkpoint(model_dir)


def test_trtllm_refuses_engine_built_without_streamingllm(tmp_path):
    cfg = {"build_config": {"plugin_config": {"streamingllm": False}}, "pretrained_config": {"max_position_embeddings": 2048}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidRequestError, match="--streamingllm enable"):
        inspect_checkpoint(tmp_path)


def test_trtllm_accepts_engine_built_with_streamingllm(tmp_path):
    cfg = {"build_config": {"plugin_config": {"streamingllm": True}},
           "pretrained_config": {"max_position_embeddings": 2048, "eos_token_id": 2}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert inspect_checkpoint(tmp_path) == Checkpoint(tmp_path, True, 2048, (2,))


def test_trtllm_refuses_folder_without_config(tmp_path):
    with pytest.raises(InvalidRequestError, match="no config.json"):
        inspect_checkpoint(tmp_path)


def test_trtllm_layout_defaults_like_the_native_engine(tmp_path):
    ck = inspect_checkpoint(_hf_dir(tmp_path, max_position_embeddings=8192))
    assert (stream_layout(EngineConfig(), ck).sinks, stream_layout(EngineConfig(), ck).window) == (4, 2044)
    ck_short = inspect_checkpoint(_hf_dir(tmp_path, max_position_embeddings=1024))
    assert stream_layout(EngineConfig(sink_tokens=8), ck_short).window == 1016
    assert stream_layout(EngineConfig(window=100), ck).capacity == 104
    with pytest.raises(InvalidRequestError, match="smaller than window"):
        stream_layout(EngineConfig(sink_tokens=16), inspect_checkpoint(_hf_dir(tmp_path, max_position_embeddings=16)))


def test_trtllm_kv_cache_is_sinks_plus_window(tmp_path):
    cfg = EngineConfig(sink_tokens=4, window=508, gpu_memory_utilization=0.7)
    layout = stream_layout(cfg, inspect_checkpoint(_hf_dir(tmp_path)))
    assert kv_cache_kwargs(cfg, layout) == {
        "max_attention_window": [512], "sink_token_length": 4, "free_gpu_memory_fraction": 0.7, "enable_block_reuse": False,
    }


def test_trtllm_engine_limits_bound_one_round(tmp_path):
    ck = inspect_checkpoint(_hf_dir(tmp_path))
    cfg = EngineConfig(sink_tokens=4, window=1020, max_turn_tokens=2000, max_batch_tokens=1024)
    lim = engine_limits(cfg, TrtllmOptions(max_reply_tokens=512), stream_layout(cfg, ck))
    assert build_kwargs(lim) == {"max_batch_size": DEFAULT_MAX_BATCH, "max_input_len": 3024, "max_seq_len": 3536, "max_num_tokens": 3024}
    assert lim.reply_budget(3024, 10_000) == 512 and lim.reply_budget(100, 7) == 7
    assert engine_limits(EngineConfig(max_sessions=5), TrtllmOptions(), stream_layout(cfg, ck)).max_batch_size == 5
    assert engine_limits(EngineConfig(max_sessions=5), TrtllmOptions(max_batch_size=9), stream_layout(cfg, ck)).max_batch_size == 9
    big_step = EngineConfig(sink_tokens=4, window=60, max_turn_tokens=100, max_batch_tokens=4096)
    assert engine_limits(big_step, TrtllmOptions(), stream_layout(big_step, ck)).max_num_tokens == 4096


def test_trtllm_llm_kwargs(tmp_path):
    ck = inspect_checkpoint(_hf_dir(tmp_path))
    assert llm_kwargs(EngineConfig(tp_size=4, dtype="bfloat16"), TrtllmOptions(), ck) == {
        "model": str(tmp_path), "tokenizer": str(tmp_path), "tensor_parallel_size": 4, "dtype": "bfloat16",
    }
    assert llm_kwargs(EngineConfig(), TrtllmOptions(tokenizer="/tok"), ck)["dtype"] == "auto"
    assert llm_kwargs(EngineConfig(), TrtllmOptions(tokenizer="/tok"), ck)["tokenizer"] == "/tok"


def test_trtllm_sampling_greedy():
    kw = sampling_kwargs(SamplingParams(max_tokens=50), 40, (2,))
    assert kw == {"max_tokens": 40, "end_id": 2, "pad_id": 2, "detokenize": False, "ignore_eos": False, "top_k": 1}


def test_trtllm_sampling_random_with_stops_and_seed():
    p = SamplingParams(temperature=0.7, top_p=0.9, top_k=50, seed=11, stop=["\n\n", "User:"])
    kw = sampling_kwargs(p, 256, (2, 5, 6))
    assert kw["temperature"] == 0.7 and kw["top_p"] == 0.9 and kw["top_k"] == 50 and kw["seed"] == 11
    assert kw["stop"] == ["\n\n", "User:"] and kw["stop_token_ids"] == [5, 6] and kw["end_id"] == 2
    no_k = sampling_kwargs(SamplingParams(temperature=1.0), 8, (2,))
    assert "top_k" not in no_k and "seed" not in no_k and "stop" not in no_k


def test_trtllm_sampling_ignore_eos_drops_stop_tokens():
    kw = sampling_kwargs(SamplingParams(ignore_eos=True), 8, (2, 5))
    assert kw["ignore_eos"] is True and "stop_token_ids" not in kw


def test_trtllm_sampling_needs_an_eos():
    with pytest.raises(InvalidRequestError, match="end-of-sequence"):
        sampling_kwargs(SamplingParams(), 8, ())


@dataclass(kw_only=True)
class SamplingParamsShapeWithRandomSeed:  # field names as in older LLM API releases
    max_tokens: int = 32
    random_seed: int | None = None


@dataclass(kw_only=True)
class SamplingParamsShapeWithSeed:
    max_tokens: int = 32
    seed: int | None = None


def test_trtllm_fit_fields_renames_and_refuses_unknown():
    assert fit_fields(SamplingParamsShapeWithRandomSeed, {"max_tokens": 3, "seed": 5}) == {"max_tokens": 3, "random_seed": 5}
    assert fit_fields(SamplingParamsShapeWithSeed, {"max_tokens": 3, "seed": 5}) == {"max_tokens": 3, "seed": 5}
    with pytest.raises(InvalidRequestError, match="no field 'ignore_eos'"):
        fit_fields(SamplingParamsShapeWithSeed, {"ignore_eos": True})


def test_trtllm_options_are_validated():
    with pytest.raises(InvalidRequestError, match="max_batch_size"):
        TrtllmOptions(max_batch_size=0)
    with pytest.raises(InvalidRequestError, match="Extra inputs"):
        TrtllmOptions(engine_dir="/x")


def test_trtllm_refuses_the_sampling_fields_it_does_not_map():
    from swiftinfer_core.errors import InvalidRequestError

    for extra in ({"presence_penalty": 0.5}, {"repetition_penalty": 1.2}, {"logit_bias": {3: 1.0}}, {"min_tokens": 2}, {"logprobs": True}, {"n": 2}):
        with pytest.raises(InvalidRequestError, match=next(iter(extra))):
            sampling_kwargs(SamplingParams(**extra), 8, (2,))
    assert sampling_kwargs(SamplingParams(presence_penalty=0.0), 8, (2,))["max_tokens"] == 8
