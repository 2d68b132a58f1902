"""TensorRT-LLM adapter: version gating and start-up refusals.

TensorRT-LLM is not installed on CPU CI (PyPI only has a stub), so nothing here
runs TensorRT-LLM. The only stand-ins are the module objects named
``FakeTrtllmModuleForVersionGating``: they exist to check which import path the
gate picks for each release, and are never used to run or imitate inference.
"""

from __future__ import annotations

import importlib.metadata
import sys
import types

import pytest

from swiftinfer_core.backends.trtllm import TrtllmEngine, check_gpus
from swiftinfer_core.backends.trtllm_versions import (
    SUPPORTED, SUPPORTED_TEXT, TrtllmUnavailableError, check_version, installed_version, llmapi_llm, load_api,
    tensorrt_engine_llm,
)
from swiftinfer_core.config import EngineConfig
from swiftinfer_core.errors import InvalidRequestError


@pytest.mark.parametrize(
    "version, label, llm, can_abort",
    [
        ("0.15.0", "0.15.0-0.18.x", llmapi_llm, False),
        ("0.18.2", "0.15.0-0.18.x", llmapi_llm, False),
        ("0.19.0", "0.19.0-0.21.x", llmapi_llm, True),
        ("0.20.0rc3", "0.19.0-0.21.x", llmapi_llm, True),
        ("0.21.0", "0.19.0-0.21.x", llmapi_llm, True),
        ("1.0.0rc0", "1.0.0rc0-1.0.0rc4", tensorrt_engine_llm, True),
        ("1.0.0rc4", "1.0.0rc0-1.0.0rc4", tensorrt_engine_llm, True),
    ],
)
def test_trtllm_supported_versions_map_to_their_api(version, label, llm, can_abort):
    g = check_version(version)
    assert (g.label, g.llm, g.can_abort) == (label, llm, can_abort)


@pytest.mark.parametrize(
    "version, why",
    [
        ("0.7.1", "predates StreamingLLM"),
        ("0.12.0", "older LLM API"),
        ("0.14.0", "older LLM API"),
        ("1.0.0rc5", "PR #6379"),
        ("1.0.0", "PR #6379"),
        ("1.1.0", "PR #6379"),
        ("1.2.0rc1", "PR #6379"),
    ],
)
def test_trtllm_unsupported_versions_refused_with_the_working_range(version, why):
    with pytest.raises(TrtllmUnavailableError) as err:
        check_version(version)
    msg = str(err.value)
    assert why in msg and SUPPORTED_TEXT in msg and version in msg


def test_trtllm_unparseable_version_refused():
    with pytest.raises(TrtllmUnavailableError, match="cannot parse"):
        check_version("not-a-version")


def test_trtllm_supported_ranges_are_contiguous_and_ordered():
    for a, b in zip(SUPPORTED, SUPPORTED[1:]):
        assert a.end == b.first
    # the 1.0 line must never use tensorrt_llm.LLM, which is the PyTorch backend there (ignores sinks)
    assert SUPPORTED[-1].llm is tensorrt_engine_llm


def _not_installed(name: str) -> str:
    raise importlib.metadata.PackageNotFoundError(name)


def test_trtllm_missing_package_says_how_to_install():
    with pytest.raises(TrtllmUnavailableError, match=r"pip install 'swiftinfer-serve\[trtllm\]'"):
        installed_version(_not_installed)


def test_trtllm_engine_refuses_when_not_installed_here():
    try:
        importlib.metadata.version("tensorrt_llm")
        pytest.skip("tensorrt_llm is installed on this machine")
    except importlib.metadata.PackageNotFoundError:
        pass
    with pytest.raises(TrtllmUnavailableError, match="not installed"):
        TrtllmEngine(EngineConfig(device="auto"))


def test_trtllm_engine_gates_version_before_touching_the_model():
    cfg = EngineConfig(device="cuda", model="/nonexistent/model")
    with pytest.raises(TrtllmUnavailableError, match="PR #6379"):
        TrtllmEngine(cfg, api_loader=lambda: load_api(version_of=lambda _: "1.1.0"))


def test_trtllm_engine_refuses_cpu():
    with pytest.raises(InvalidRequestError, match="CUDA GPUs only"):
        TrtllmEngine(EngineConfig(device="cpu"))


def test_trtllm_tensor_parallel_needs_all_gpus_in_the_replica():
    check_gpus(2, 2)
    with pytest.raises(TrtllmUnavailableError, match="num_gpus=4"):
        check_gpus(4, 1)


class FakeTrtllmModuleForVersionGating(types.ModuleType):
    """A named module holding marker classes, to check which import path the gate
    binds for a release. Not TensorRT-LLM, never used for inference."""


def _install_fake_modules(monkeypatch, with_engine_module: bool = True):
    markers = {}
    root = FakeTrtllmModuleForVersionGating("tensorrt_llm")
    llmapi = FakeTrtllmModuleForVersionGating("tensorrt_llm.llmapi")
    for name in ("LLM", "KvCacheConfig", "BuildConfig", "SamplingParams"):
        markers[f"llmapi.{name}"] = type(f"Marker_llmapi_{name}", (), {})
        setattr(llmapi, name, markers[f"llmapi.{name}"])
    monkeypatch.setitem(sys.modules, "tensorrt_llm", root)
    monkeypatch.setitem(sys.modules, "tensorrt_llm.llmapi", llmapi)
    if with_engine_module:
        engine = FakeTrtllmModuleForVersionGating("tensorrt_llm._tensorrt_engine")
        markers["engine.LLM"] = engine.LLM = type("Marker_tensorrt_engine_LLM", (), {})
        monkeypatch.setitem(sys.modules, "tensorrt_llm._tensorrt_engine", engine)
    return markers


def test_trtllm_gate_binds_the_tensorrt_engine_llm_on_1_0(monkeypatch):
    markers = _install_fake_modules(monkeypatch)
    api = load_api(version_of=lambda _: "1.0.0rc2")
    assert api.LLM is markers["engine.LLM"] and api.LLM is not markers["llmapi.LLM"]
    assert api.KvCacheConfig is markers["llmapi.KvCacheConfig"]
    assert api.generation.can_abort


def test_trtllm_gate_binds_llmapi_llm_before_1_0(monkeypatch):
    markers = _install_fake_modules(monkeypatch)
    api = load_api(version_of=lambda _: "0.17.0")
    assert api.LLM is markers["llmapi.LLM"] and api.SamplingParams is markers["llmapi.SamplingParams"]
    assert not api.generation.can_abort


def test_trtllm_gate_reports_a_missing_module_clearly(monkeypatch):
    _install_fake_modules(monkeypatch, with_engine_module=False)
    monkeypatch.setitem(sys.modules, "tensorrt_llm._tensorrt_engine", None)  # import -> ImportError
    with pytest.raises(TrtllmUnavailableError, match=r"LLM class cannot be loaded .*tensorrt_llm\._tensorrt_engine"):
        load_api(version_of=lambda _: "1.0.0rc1")


def test_trtllm_engine_implements_the_protocol_and_is_wired_in_the_factory():
    from deployments.config import EngineBackend
    from deployments.replica.engine_factory import ENGINE_IMPLEMENTATIONS, make_engine, trtllm_engine
    from swiftinfer_core.protocol import EngineProtocol

    assert issubclass(TrtllmEngine, EngineProtocol)
    assert ENGINE_IMPLEMENTATIONS[EngineBackend.TRTLLM] is trtllm_engine
    with pytest.raises(InvalidRequestError, match="CUDA GPUs only"):  # the config switch reaches the adapter
        make_engine(EngineBackend.TRTLLM, EngineConfig(device="cpu"), cpu_threads=1)
