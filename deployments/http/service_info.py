"""What the service says about itself: the server facts of ``GET /v1/models``'s model
card (``server_info``) and the OpenAPI schema with the request bodies that the
routes read raw (``openapi_schema``; each route names its body with ``request_body``).
"""

from __future__ import annotations

import importlib.metadata

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from deployments.config import AppConfig
from deployments.http.completions_schema import CompletionRequest
from deployments.http.openai_schema import ChatCompletionRequest
from deployments.http.responses_schema import ResponsesRequest


def server_info(cfg: AppConfig) -> dict:
    """What a benchmark records about the server it measured (GET /v1/models)."""
    versions = {}
    for dist in ("swiftinfer-serve", "ray", "torch"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {"backend": cfg.backend.value, "engine": cfg.engine.model_dump(mode="json"), "versions": versions,
            "scaling": {"min_replicas": cfg.scaling.min_replicas, "max_replicas": cfg.scaling.max_replicas},
            "session_log": cfg.session_log.backend.value, "ingress_replicas": cfg.ingress_replicas,
            "stream_interval_ms": cfg.stream_interval_ms, "stream_max_chunks_per_s": cfg.stream_max_chunks_per_s,
            "gil_switch_interval_ms": cfg.gil_switch_interval_ms,
            "idle_ttl_s": cfg.limits.idle_ttl_s, "max_ongoing_requests": cfg.ongoing_limit}


def request_body(model: type) -> dict:
    """A route's ``openapi_extra`` request body: ``model``'s schema, which ``openapi_schema`` adds."""
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}


def openapi_schema(app: FastAPI) -> dict:
    """FastAPI's schema plus the chat and completion request bodies (the routes read
    raw bodies, so FastAPI cannot infer them)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version="1", routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ChatCompletionRequest, CompletionRequest, ResponsesRequest):
            request = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(request.pop("$defs", {}))
            components[model.__name__] = request
        app.openapi_schema = schema
    return app.openapi_schema
