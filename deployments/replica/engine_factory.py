"""Engine factory: one ``EngineProtocol`` implementation per ``EngineBackend``.

Each backend maps to a small function that imports its engine class where it
is called, so a replica never branches on the backend and the heavy modules
(torch, TensorRT-LLM) load only in the replica that uses them.
"""

from __future__ import annotations

from typing import Callable

from deployments.config import EngineBackend
from swiftinfer_core.config import Device, EngineConfig
from swiftinfer_core.protocol import EngineProtocol


def native_engine(config: EngineConfig) -> EngineProtocol:
    try:
        from swiftinfer_core.engine.engine import Engine
    except ImportError as exc:
        raise RuntimeError(f"engine implementation 'native' is not available: {exc}") from exc
    return Engine(config)


def trtllm_engine(config: EngineConfig) -> EngineProtocol:
    try:
        from swiftinfer_core.backends.trtllm import TrtllmEngine
    except ImportError as exc:
        raise RuntimeError(f"engine implementation 'trtllm' is not available: {exc}") from exc
    return TrtllmEngine(config)


# backend -> EngineConfig -> engine (in the replica's process)
ENGINE_IMPLEMENTATIONS: dict[EngineBackend, Callable[[EngineConfig], EngineProtocol]] = {
    EngineBackend.NATIVE: native_engine,
    EngineBackend.TRTLLM: trtllm_engine,
}


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
    engine = ENGINE_IMPLEMENTATIONS[backend](config)
    if not isinstance(engine, EngineProtocol):
        raise TypeError(f"{type(engine).__name__} does not implement EngineProtocol")
    return engine
