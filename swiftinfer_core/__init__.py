"""SwiftInfer core: an exact StreamingLLM engine (attention sinks + rolling window)."""

from swiftinfer_core.config import EngineConfig, SamplingParams
from swiftinfer_core.engine.engine import Engine
from swiftinfer_core.errors import (
    CapacityError,
    EngineClosedError,
    InvalidRequestError,
    PromptTooLongError,
    SessionBusyError,
    SessionNotFoundError,
    SwiftInferError,
)

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
