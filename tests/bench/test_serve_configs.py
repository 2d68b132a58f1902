"""The bench's Serve configs (bench/serve_*.yaml) validate as the service's AppConfig."""

from pathlib import Path

import pytest
import yaml

from deployments.config import AppConfig

BENCH = Path(__file__).resolve().parents[2] / "bench"
CONFIGS = sorted(BENCH.glob("serve_*.yaml"))


def test_the_bench_has_serve_configs():
    assert {p.name for p in CONFIGS} >= {"serve_gpu7b.yaml", "serve_gpu7b_shared.yaml", "serve_gpu_smol_shared.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_bench_serve_config_validates(path):
    for app in yaml.safe_load(path.read_text())["applications"]:
        AppConfig.model_validate(app["args"])

