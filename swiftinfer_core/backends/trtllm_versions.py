"""Which TensorRT-LLM releases can serve StreamingLLM, and where their LLM API lives.

Facts this table rests on (TensorRT-LLM release notes and pull requests):

- 0.8.0 (Mar 2024) added StreamingLLM for LLaMA: build plugin ``streamingllm``,
  runtime ``sink_token_length`` and ``max_attention_window``. 0.7.x has none.
- The LLM API changed shape until 0.15.0 (0.9 ``LLM(streaming_llm=...)``, 0.11
  ``max_new_tokens`` and an int window). From 0.15.0 it has the calls this adapter
  makes: ``KvCacheConfig(max_attention_window=[W], sink_token_length=S)``,
  ``BuildConfig().plugin_config.streamingllm``, ``SamplingParams(max_tokens,
  ignore_eos, detokenize, stop)`` and ``generate_async(ids, params, streaming=True)``.
- 0.19.0 added aborting a request from the LLM API (``RequestOutput.abort()``).
- 1.0 made PyTorch the default ``tensorrt_llm.LLM`` (already in 1.0.0rc2, whose
  PyTorch page shows ``from tensorrt_llm import LLM``); the TensorRT-engine LLM
  moved to ``tensorrt_llm._tensorrt_engine.LLM``. The PyTorch backend ignores
  ``sink_token_length``: it must not be used.
- PR #6379 (merged 2025-08-05, "Hopper SWA non-cyclic kernels") removed
  StreamingLLM: ``trtllm-build`` asserts "StreamingLLM is no longer supported".
  1.0.0rc4 was cut on 2025-07-16; later releases (1.0.0rc5 onwards, 1.0.0, 1.1+)
  are refused, conservatively, because we could not confirm which of them
  predate the merge.

The installed version is read from the distribution's metadata (no import of
the heavy package) and checked against ``SUPPORTED`` before anything is built,
so an unsupported release fails at start-up with one message naming the
releases that work, instead of serving sink-less window attention (which
collapses once a conversation outgrows the window).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Callable

from packaging.version import InvalidVersion, Version

from swiftinfer_core.errors import SwiftInferError

DISTRIBUTION = "tensorrt_llm"
INSTALL_HINT = (
    "install the extra on a CUDA machine: pip install 'swiftinfer-serve[trtllm]' "
    "--extra-index-url https://pypi.nvidia.com (or use an NGC TensorRT-LLM container of a supported release)"
)


class TrtllmUnavailableError(SwiftInferError, RuntimeError):
    """TensorRT-LLM is missing, unsupported, or cannot serve StreamingLLM here."""


def llmapi_llm() -> type:
    """The TensorRT-engine LLM before 1.0: ``tensorrt_llm.llmapi.LLM``."""
    from tensorrt_llm.llmapi import LLM

    return LLM


def tensorrt_engine_llm() -> type:
    """The TensorRT-engine LLM from 1.0 on (``tensorrt_llm.LLM`` is the PyTorch backend there)."""
    from tensorrt_llm._tensorrt_engine import LLM

    return LLM


def llmapi_configs() -> tuple[type, type, type]:
    """(KvCacheConfig, BuildConfig, SamplingParams): ``tensorrt_llm.llmapi`` in every supported release."""
    from tensorrt_llm.llmapi import BuildConfig, KvCacheConfig, SamplingParams

    return KvCacheConfig, BuildConfig, SamplingParams


@dataclass(frozen=True)
class ApiGeneration:
    """A range of releases ``[first, end)`` sharing one shape of the LLM API.

    ``llm`` imports its LLM class, always the TensorRT-engine one (never the
    PyTorch backend, which ignores sinks)."""

    label: str
    first: Version
    end: Version
    llm: Callable[[], type]
    can_abort: bool

    def covers(self, version: Version) -> bool:
        return self.first <= version < self.end


SUPPORTED: tuple[ApiGeneration, ...] = (
    ApiGeneration("0.15.0-0.18.x", Version("0.15.0"), Version("0.19.0.dev0"), llm=llmapi_llm, can_abort=False),
    ApiGeneration("0.19.0-0.21.x", Version("0.19.0.dev0"), Version("1.0.0.dev0"), llm=llmapi_llm, can_abort=True),
    ApiGeneration("1.0.0rc0-1.0.0rc4", Version("1.0.0.dev0"), Version("1.0.0rc5"), llm=tensorrt_engine_llm, can_abort=True),
)

SUPPORTED_TEXT = ", ".join(g.label for g in SUPPORTED)
REMOVED_AT = Version("1.0.0rc5")
STREAMINGLLM_ADDED = Version("0.8.0")


def _refusal(version: Version) -> str:
    if version >= REMOVED_AT:
        why = ("StreamingLLM was removed from TensorRT-LLM in Aug 2025 (PR #6379: trtllm-build asserts "
               "'StreamingLLM is no longer supported'; the PyTorch backend ignores sink_token_length), "
               "so this release would serve window attention without sinks")
    elif version < STREAMINGLLM_ADDED:
        why = "this release predates StreamingLLM (added in 0.8.0)"
    else:
        why = "this release has StreamingLLM but an older LLM API shape than this adapter speaks"
    return f"TensorRT-LLM {version} cannot be used: {why}. Supported releases: {SUPPORTED_TEXT}."


def check_version(version: str) -> ApiGeneration:
    """The API generation of ``version``, or ``TrtllmUnavailableError`` naming the working releases."""
    try:
        v = Version(version)
    except InvalidVersion:
        raise TrtllmUnavailableError(f"cannot parse the TensorRT-LLM version {version!r}; supported releases: {SUPPORTED_TEXT}") from None
    for generation in SUPPORTED:
        if generation.covers(v):
            return generation
    raise TrtllmUnavailableError(_refusal(v))


def installed_version(version_of: Callable[[str], str] = importlib.metadata.version) -> str:
    """The installed distribution's version, read from its metadata (no import)."""
    try:
        return version_of(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise TrtllmUnavailableError(f"the 'trtllm' backend needs TensorRT-LLM, which is not installed: {INSTALL_HINT}") from None


@dataclass(frozen=True)
class TrtllmApi:
    """The classes of the installed release that the adapter calls."""

    version: str
    generation: ApiGeneration
    LLM: type
    KvCacheConfig: type
    BuildConfig: type
    SamplingParams: type


def _load(what: str, load: Callable[[], object], version: str):
    try:
        return load()
    except (ImportError, AttributeError) as exc:
        raise TrtllmUnavailableError(
            f"TensorRT-LLM {version} is installed but its {what} cannot be loaded ({type(exc).__name__}: {exc}); "
            f"a CUDA machine with the matching TensorRT is needed. Supported releases: {SUPPORTED_TEXT}"
        ) from exc


def load_api(version_of: Callable[[str], str] = importlib.metadata.version) -> TrtllmApi:
    """Gate on the installed version, then import its LLM API classes."""
    version = installed_version(version_of)
    generation = check_version(version)
    llm = _load("LLM class", generation.llm, version)
    kv_cache_config, build_config, sampling_params = _load("LLM API configs", llmapi_configs, version)
    return TrtllmApi(
        version=version, generation=generation, LLM=llm,
        KvCacheConfig=kv_cache_config, BuildConfig=build_config, SamplingParams=sampling_params,
    )
