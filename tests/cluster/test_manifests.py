"""Cluster manifests are valid, consistent with serve_config.yaml, and the checks
catch broken ones (every negative case must be reported)."""

from __future__ import annotations

import copy
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"


def _load_validator():
    spec = importlib.util.spec_from_file_location("cluster_validate", CLUSTER / "validate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validate = _load_validator()


def _yaml(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.fixture
def rayservice() -> dict:
    return _yaml("cluster/rayservice.yaml")


@pytest.fixture
def ray_cluster() -> dict:
    return _yaml("cluster/ray-cluster.yaml")


@pytest.mark.parametrize("name", ["cluster/rayservice.yaml", "cluster/ray-cluster.yaml", "cluster/serve-gpu.yaml", "serve_config.yaml"])
def test_manifest_is_valid(name):
    assert validate.check_file(ROOT / name) == []


def test_rayservice_embeds_serve_gpu_config(rayservice):
    assert yaml.safe_load(rayservice["spec"]["serveConfigV2"]) == _yaml("cluster/serve-gpu.yaml")


def test_cluster_serve_config_is_the_serve_config_application():
    local, gpu = _yaml("serve_config.yaml"), _yaml("cluster/serve-gpu.yaml")
    (app_local,), (app_gpu,) = local["applications"], gpu["applications"]
    for key in ("name", "route_prefix", "import_path"):
        assert app_gpu[key] == app_local[key], key
    for key in ("model_id", "backend", "router"):
        assert app_gpu["args"].get(key) == app_local["args"].get(key), key
    assert gpu["http_options"]["port"] == local["http_options"]["port"]
    assert app_gpu["args"]["engine"]["device"] == "cuda"


def test_ray_versions_agree(rayservice):
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    base = re.search(r"^FROM rayproject/ray:(\S+)-py311-gpu$", (CLUSTER / "Dockerfile").read_text(), re.M)
    assert base and base.group(1) == ray.__version__


def _worker(doc: dict) -> dict:
    return doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]


def _worker_container(doc: dict) -> dict:
    return _worker(doc)["template"]["spec"]["containers"][0]


def _head_container(doc: dict) -> dict:
    return doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _set_serve(doc: dict, mutate) -> None:
    cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
    mutate(cfg)
    doc["spec"]["serveConfigV2"] = yaml.safe_dump(cfg)


BROKEN_RAYSERVICES = {
    "misspelt worker field": (lambda d: _worker(d).update(minReplica=1), "Additional properties are not allowed"),
    "rayStartParams not strings": (lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update({"num-gpus": 0}), "is not of type 'string'"),
    "no head group": (lambda d: d["spec"]["rayClusterConfig"].pop("headGroupSpec"), "'headGroupSpec' is a required property"),
    "bad GPU quantity": (lambda d: _worker_container(d)["resources"]["limits"].update({"nvidia.com/gpu": "one"}), "is not valid under any of the given schemas"),
    "wrong apiVersion": (lambda d: d.update(apiVersion="ray.io/v1alpha2"), "'ray.io/v1' was expected"),
    "container without image": (lambda d: _worker_container(d).pop("image"), "'image' is a required property"),
    "GPUs per pod != tp_size": (lambda d: _worker_container(d)["resources"]["limits"].update({"nvidia.com/gpu": 2}), "engine.tp_size is [1]"),
    "head with GPUs": (lambda d: _head_container(d)["resources"]["limits"].update({"nvidia.com/gpu": 1}), "head: must not offer GPUs"),
    "readiness on another path": (lambda d: _worker_container(d)["readinessProbe"]["httpGet"].update(path="/health"), "readinessProbe httpGet /healthz"),
    "no readiness probe": (lambda d: _worker_container(d).pop("readinessProbe"), "readinessProbe httpGet /healthz"),
    "unknown app arg": (lambda d: _set_serve(d, lambda c: c["applications"][0]["args"]["engine"].update(windw=10)), "windw: Extra inputs are not permitted"),
    "app arg out of bounds": (lambda d: _set_serve(d, lambda c: c["applications"][0]["args"]["engine"].update(sink_tokens=1000)), "sink_tokens: Input should be less than or equal to 64"),
    "bad proxy_location": (lambda d: _set_serve(d, lambda c: c.update(proxy_location="Nowhere")), "proxy_location"),
    "unknown serve key": (lambda d: _set_serve(d, lambda c: c.update(htp_options={})), "unknown key 'htp_options'"),
    "serveConfigV2 not YAML": (lambda d: d["spec"].update(serveConfigV2="applications: [unclosed"), "not YAML"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_RAYSERVICES))
def test_broken_rayservice_is_rejected(rayservice, case):
    mutate, expected = BROKEN_RAYSERVICES[case]
    doc = copy.deepcopy(rayservice)
    mutate(doc)
    errors = validate.check_rayservice(doc)
    assert any(expected in e for e in errors), errors


BROKEN_CLUSTERS = {
    "unknown top-level key": (lambda c: c.update(max_worker=3), "Additional properties are not allowed"),
    "head type missing": (lambda c: c.update(head_node_type="nope"), "head_node_type"),
    "min above max workers": (lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=20), "max_workers"),
    "head offers GPUs": (lambda c: c["available_node_types"]["head"]["resources"].update(GPU=1), "head must offer no GPUs"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CLUSTERS))
def test_broken_ray_cluster_is_rejected(ray_cluster, case):
    mutate, expected = BROKEN_CLUSTERS[case]
    cfg = copy.deepcopy(ray_cluster)
    mutate(cfg)
    errors = validate.check_ray_cluster(cfg)
    assert any(expected in e for e in errors), errors


def test_validate_cli_exit_codes(tmp_path, rayservice):
    ok = subprocess.run([sys.executable, str(CLUSTER / "validate.py"), str(CLUSTER / "rayservice.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    _worker_container(rayservice)["resources"]["limits"]["nvidia.com/gpu"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(rayservice))
    bad = subprocess.run([sys.executable, str(CLUSTER / "validate.py"), str(tmp_path / "bad.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "INVALID" in bad.stdout


def test_node_script_syntax_and_usage():
    assert subprocess.run(["bash", "-n", str(CLUSTER / "node.sh")]).returncode == 0
    r = subprocess.run(["bash", str(CLUSTER / "node.sh"), "bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "cluster/node.sh head" in r.stdout
