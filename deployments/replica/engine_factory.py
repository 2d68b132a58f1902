"""Engine factory: one ``EngineProtocol`` implementation per ``EngineBackend``.

The table maps the enum to an import path, so a replica never branches on the
backend and the heavy modules (torch, TensorRT-LLM) load only where used.
"""

from __future__ import annotations

import importlib
from typing import Callable

from deployments.config import EngineBackend
from swiftinfer_core.config import Device, EngineConfig
from swiftinfer_core.protocol import EngineProtocol

# backend -> "module:attribute" of a callable EngineConfig -> EngineProtocol
ENGINE_IMPLEMENTATIONS: dict[EngineBackend, str] = {
    EngineBackend.NATIVE: "swiftinfer_core:Engine",
    EngineBackend.TRTLLM: "swiftinfer_core.backends.trtllm:TrtllmEngine",
}


def _load(path: str) -> Callable[[EngineConfig], EngineProtocol]:
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"engine implementation {path!r} is not available: {exc}") from exc


def make_engine(backend: EngineBackend, config: EngineConfig, cpu_threads: int, own_process: bool = False) -> EngineProtocol:
    """Build the engine for ``backend``. A CPU engine gets ``cpu_threads`` torch
    threads so that replicas sharing a host do not oversubscribe its cores.
    ``own_process`` runs the native engine's steps in a child process
    (engine/process.py), off the caller's GIL."""
    if backend is EngineBackend.NATIVE and own_process:
        from swiftinfer_core.engine.process import ProcessEngine

        return ProcessEngine(config, cpu_threads)
    if config.device != Device.CUDA:
        import torch

        torch.set_num_threads(cpu_threads)
    engine = _load(ENGINE_IMPLEMENTATIONS[backend])(config)
    if not isinstance(engine, EngineProtocol):
        raise TypeError(f"{type(engine).__name__} does not implement EngineProtocol")
    return engine
