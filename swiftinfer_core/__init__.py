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
def __getattr__(name: str):
    if name in ("EngineConfig", "SamplingParams"):
        from swiftinfer_core import config

        return getattr(config, name)
    if name == "Engine":
        from swiftinfer_core.engine.engine import Engine

        return Engine
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
