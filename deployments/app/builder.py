"""Application builder: ``build_app(args)`` -> Ingress bound to the LLM deployment
(``http_front: direct``: the LLM deployment as the ingress, with its route picker; app/direct.py).

Used by ``serve_config.yaml`` (``import_path: deployments.app.builder:build_app``) and
by tests and benchmarks (``serve.run(build_app({...}))``). ``args`` is the dict
form of ``AppConfig``.
"""

from __future__ import annotations

from typing import Any, Callable

import os

import ray
from pydantic import ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.deployment import Deployment
from ray.serve.config import RequestRouterConfig

from deployments.app.autoscaling import policy_config
from deployments.app.direct import DirectReplica
from deployments.app.route_picker import RoutePicker
from deployments.config import AppConfig, EngineBackend, HttpFront, RouterKind
from deployments.sessions.directory import directory_spec
from deployments.app.exposure import check_exposure, resolve_keys_file, serve_http_host
from deployments.http.ingress import Ingress
from deployments.replica.replica import LLMReplica
from deployments.sessions.router import SessionAffinityRouter
from swiftinfer_core.config import Device

def _consistent_hash_router() -> type:
    from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

    return ConsistentHashRouter


def _power_of_two_router() -> type:
    from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter

    return PowerOfTwoChoicesRequestRouter


# router kind -> (request router class, its request_router_kwargs from the config); Ray's own
# routers load only when picked (one is experimental)
ROUTERS: dict[RouterKind, tuple[Callable[[], type], Callable[[AppConfig], dict]]] = {
    RouterKind.SESSION_AFFINITY: (
        lambda: SessionAffinityRouter,
        lambda cfg: {"directory": directory_spec(cfg), "owner_grace_s": cfg.owner_grace_s, "owner_cache_s": cfg.owner_cache_s},
    ),
    RouterKind.CONSISTENT_HASH: (
        _consistent_hash_router,
        lambda cfg: {"num_virtual_nodes": 100, "num_fallback_replicas": 0},  # strict: a fallback would split a session
    ),
    RouterKind.POWER_OF_TWO: (_power_of_two_router, lambda cfg: {}),
}


def with_cluster_device(cfg: AppConfig) -> AppConfig:
    """``device: auto`` becomes cuda when the cluster has GPUs, else cpu, so the
    replica's resource request and the engine agree."""
    if cfg.engine.device != Device.AUTO:
        return cfg
    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    engine = cfg.engine.model_copy(update={"device": Device.CUDA if gpus > 0 else Device.CPU})
    return cfg.model_copy(update={"engine": engine})


def _actor(cfg: AppConfig, gpus: float) -> dict:
    return {"num_cpus": cfg.replica_cpus, "num_gpus": gpus, "resources": dict(cfg.replica_resources)}


def _native_placement(cfg: AppConfig) -> dict:
    """Native engine: the replica actor is rank 0 with one GPU; ranks 1..tp-1 are
    actors the engine starts in the other bundles (swiftinfer_core/parallel)."""
    tp = cfg.engine.tp_size
    if tp == 1:
        return {"ray_actor_options": _actor(cfg, gpus=cfg.gpu_share)}
    return {
        "ray_actor_options": _actor(cfg, gpus=1),
        "placement_group_bundles": [{"CPU": cfg.replica_cpus, "GPU": 1, **cfg.replica_resources}] + [{"GPU": 1}] * (tp - 1),
        "placement_group_strategy": "STRICT_PACK",  # ranks talk over localhost
    }


def _trtllm_placement(cfg: AppConfig) -> dict:
    """TensorRT-LLM spawns its MPI ranks inside the replica's node and they inherit
    its CUDA_VISIBLE_DEVICES: the replica actor itself holds all tp GPUs."""
    tp = cfg.engine.tp_size
    if tp == 1:
        return {"ray_actor_options": _actor(cfg, gpus=cfg.gpu_share)}
    return {
        "ray_actor_options": _actor(cfg, gpus=tp),
        "placement_group_bundles": [{"CPU": cfg.replica_cpus, "GPU": tp, **cfg.replica_resources}],
        "placement_group_strategy": "STRICT_PACK",
    }


# backend -> GPU resources of one replica
PLACEMENTS: dict[EngineBackend, Any] = {EngineBackend.NATIVE: _native_placement, EngineBackend.TRTLLM: _trtllm_placement}


def llm_deployment_options(cfg: AppConfig) -> dict:
    """Serve options of the LLM deployment: resources, router, scaling."""
    router_class, router_kwargs = ROUTERS[cfg.router]
    opts: dict[str, Any] = {
        "name": "LLMReplica",
        "max_ongoing_requests": cfg.ongoing_limit,
        "max_queued_requests": cfg.max_queued_requests,
        "graceful_shutdown_timeout_s": cfg.graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.5,
        "health_check_period_s": cfg.health_check_period_s,
        # one line per call is the ingress's to write: here it repeats it on every turn's hot path
        "logging_config": {"enable_access_log": False},
        "request_router_config": RequestRouterConfig(
            request_router_class=router_class(),
            request_router_kwargs=router_kwargs(cfg),
            request_routing_stats_period_s=cfg.routing_stats_period_s,
            request_routing_stats_timeout_s=max(10.0, 3 * cfg.routing_stats_period_s),
        ),
    }
    opts.update(PLACEMENTS[cfg.backend](cfg) if cfg.uses_gpu else {"ray_actor_options": _actor(cfg, gpus=0)})
    s = cfg.scaling
    if s.fixed:
        opts["num_replicas"] = s.min_replicas
    else:
        opts["autoscaling_config"] = {
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "initial_replicas": s.initial_replicas,
            "target_ongoing_requests": cfg.request_target,
            "upscale_delay_s": s.upscale_delay_s,
            "downscale_delay_s": s.downscale_delay_s,
            "look_back_period_s": s.look_back_period_s,
            "metrics_interval_s": s.metrics_interval_s,
            "policy": policy_config(cfg.request_target, s.target_active_sessions, s.target_kv_use),
        }
    return opts


def build_deployments(cfg: AppConfig) -> tuple[Deployment, Deployment, dict]:
    """``(ingress, llm, payload)`` unbound, for callers that adjust Serve options
    (e.g. the benchmark changing ``num_replicas`` without touching init args,
    which Serve then applies as a scale event instead of a redeploy)."""
    payload = cfg.model_dump(mode="json")
    llm = serve.deployment(LLMReplica).options(**llm_deployment_options(cfg))
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name="Ingress", num_replicas=cfg.ingress_replicas, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024
    )
    return ingress, llm, payload


DIRECT_ENV = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_ENABLE_DIRECT_INGRESS")


def build_direct(cfg: AppConfig) -> Application:
    """The LLM deployment serving HTTP itself, HAProxy asking the route picker which replica."""
    missing = [name for name in DIRECT_ENV if os.environ.get(name) != "1"]
    if missing:
        raise ValueError(f"http_front: direct needs {' and '.join(f'{n}=1' for n in missing)} in the environment "
                         "that starts Ray and Serve (`make serve FRONT=direct`); without them no replica serves HTTP")
    payload = cfg.model_dump(mode="json")
    opts = llm_deployment_options(cfg)
    # HTTP requests count in Serve's limit beside handle calls forwarded to owners; the engine admits turns (429)
    opts["max_ongoing_requests"] = 2 * cfg.ongoing_limit
    llm = serve.deployment(serve.ingress()(DirectReplica)).options(**opts).bind(payload)
    picker = serve.deployment(serve.ingress()(RoutePicker)).options(
        name="RoutePicker", num_replicas=cfg.route_pickers, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024
    )
    return llm._with_ingress_request_router(picker.bind(llm, payload))  # Serve's (internal) hook, as Ray Serve LLM uses it


def parse_config(args: dict | None) -> AppConfig:
    try:
        return resolve_keys_file(with_cluster_device(AppConfig.model_validate(args or {})))
    except ValidationError as exc:
        raise ValueError(f"invalid SwiftInfer Serve config:\n{exc}") from None


def build_app(args: dict | None = None) -> Application:
    cfg = parse_config(args)
    check_exposure(cfg, serve_http_host())  # no keyless service on a network address (exposure.py)
    if cfg.http_front is HttpFront.DIRECT:
        return build_direct(cfg)
    ingress, llm, payload = build_deployments(cfg)
    return ingress.bind(llm.bind(payload), payload)
