"""SwiftInfer core: an exact StreamingLLM engine (attention sinks + rolling window)."""

from swiftinfer_core.errors import (
    CapacityError,
    EngineClosedError,
    InvalidRequestError,
    PromptTooLongError,
    SessionBusyError,
    SessionNotFoundError,
    SwiftInferError,
)

# Lazy: config needs pydantic and the engine pulls in everything; kernels,
# cache layout and benches import submodules without them (the GPU image has no
# pydantic). ``from swiftinfer_core import EngineConfig`` still works.
_LAZY = {"EngineConfig": "swiftinfer_core.config", "SamplingParams": "swiftinfer_core.config", "Engine": "swiftinfer_core.engine.engine"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'swiftinfer_core' has no attribute {name!r}")


__all__ = [
    "Engine",
    "EngineConfig",
    "SamplingParams",
    "SwiftInferError",
    "InvalidRequestError",
    "PromptTooLongError",
    "SessionNotFoundError",
    "SessionBusyError",
    "CapacityError",
    "EngineClosedError",
]
