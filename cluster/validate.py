"""Offline checks of the cluster manifests (run in CI by tests/cluster/test_manifests.py).

    python cluster/validate.py cluster/rayservice.yaml cluster/ray-cluster.yaml cluster/serve-gpu.yaml

- RayService: JSON Schema written from KubeRay's CRD (cluster/schema/), then the
  embedded serveConfigV2 like a Serve config file (below), then placement policy:
  head without GPUs, every GPU worker pod with exactly engine.tp_size GPUs, and a
  readiness probe GET /healthz on the Serve HTTP port.
- Serve config: Ray Serve's own ServeDeploySchema (unknown top-level keys are
  errors), then our AppConfig for every application built by deployments.app.builder.
- `ray up` config: Ray's own cluster schema (ray/autoscaler/ray-schema.json, via
  ray's validate_config after its defaults are filled in), and a head without GPUs.

Each check returns a list of messages; empty means valid.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "schema" / "rayservice.schema.json"
APP_IMPORT_PATH = "deployments.app.builder:build_app"
GPU = "nvidia.com/gpu"


def rayservice_schema_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def serve_config_errors(cfg: object) -> list[str]:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from deployments.config import AppConfig

    if not isinstance(cfg, dict):
        return ["serve config: not a mapping"]
    unknown = sorted(set(cfg) - set(ServeDeploySchema.model_fields))
    errors = [f"serve config: unknown key {k!r}" for k in unknown]
    try:
        parsed = ServeDeploySchema.model_validate(cfg)
    except ValidationError as exc:
        return errors + [f"serve config: {e['loc']}: {e['msg']}" for e in exc.errors()]
    for app in parsed.applications:
        if app.import_path == APP_IMPORT_PATH:
            try:
                AppConfig.model_validate(app.args or {})
            except ValidationError as exc:
                errors += [f"application {app.name}: args.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return errors


def _our_apps(serve_cfg: dict) -> list[dict]:
    return [a for a in serve_cfg.get("applications", []) if a.get("import_path") == APP_IMPORT_PATH]


def _gpus(container: dict) -> int:
    res = container.get("resources", {})
    return int(res.get("limits", {}).get(GPU, res.get("requests", {}).get(GPU, 0)))


def placement_errors(doc: dict, serve_cfg: dict) -> list[str]:
    """Head without GPUs; GPU workers sized to tp_size; /healthz readiness on the Serve port."""
    errors = []
    cluster = doc["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    if head.get("rayStartParams", {}).get("num-gpus") != "0" or any(_gpus(c) for c in head["template"]["spec"]["containers"]):
        errors.append("head: must not offer GPUs (rayStartParams num-gpus: \"0\", no nvidia.com/gpu)")
    port = serve_cfg.get("http_options", {}).get("port", 8000)
    tp_sizes = {a["args"]["engine"].get("tp_size", 1) for a in _our_apps(serve_cfg) if a["args"]["engine"].get("device") == "cuda"}
    gpu_groups = 0
    for group in cluster.get("workerGroupSpecs", []):
        name = group["groupName"]
        for c in group["template"]["spec"]["containers"]:
            gpus = _gpus(c)
            if gpus:
                gpu_groups += 1
                if gpus not in tp_sizes:
                    errors.append(f"worker group {name}: {gpus} GPU(s) per pod, but the Serve config's engine.tp_size is {sorted(tp_sizes)}")
            probe = c.get("readinessProbe", {}).get("httpGet", {})
            if probe.get("path") != "/healthz" or probe.get("port") not in (port, "serve"):
                errors.append(f"worker group {name}: container {c['name']} needs readinessProbe httpGet /healthz on port {port}")
    if tp_sizes and not gpu_groups:
        errors.append("no worker group offers GPUs, but the Serve config runs on cuda")
    return errors


def check_rayservice(doc: dict) -> list[str]:
    errors = rayservice_schema_errors(doc)
    if errors:
        return errors
    try:
        serve_cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
    except yaml.YAMLError as exc:
        return [f"serveConfigV2: not YAML: {exc}"]
    errors = serve_config_errors(serve_cfg)
    return errors or placement_errors(doc, serve_cfg)


def check_ray_cluster(cfg: dict) -> list[str]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(json.loads(json.dumps(cfg))))
    except (jsonschema.ValidationError, ValueError, RuntimeError, KeyError) as exc:
        return [f"ray cluster config: {getattr(exc, 'message', exc)}"]
    head = cfg["available_node_types"][cfg["head_node_type"]]
    starts = " ".join(cfg.get("head_start_ray_commands", []))
    if head.get("resources", {}).get("GPU") != 0 or "--num-gpus=0" not in starts:
        return ["ray cluster config: the head must offer no GPUs (resources GPU: 0 and ray start --num-gpus=0)"]
    return []


def check_file(path: Path) -> list[str]:
    doc = yaml.safe_load(path.read_text())
    if isinstance(doc, dict) and doc.get("kind") == "RayService":
        return check_rayservice(doc)
    if isinstance(doc, dict) and "available_node_types" in doc:
        return check_ray_cluster(doc)
    return serve_config_errors(doc)


def main(paths: list[str]) -> int:
    bad = 0
    for p in paths:
        errors = check_file(Path(p))
        print(f"{p}: {'ok' if not errors else 'INVALID'}")
        for e in errors:
            print(f"  - {e}")
        bad += bool(errors)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
