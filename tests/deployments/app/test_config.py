"""AppConfig: the LLM replica's request limit follows its KV slots unless set."""

import pytest
from pydantic import ValidationError

from deployments.app.builder import llm_deployment_options
from deployments.config import AppConfig


@pytest.mark.parametrize("given, slots, want", [(None, None, 256), (None, 64, 64), (None, 1, 1), (10, 64, 10)])
def test_ongoing_limit_defaults_to_the_kv_slots(given, slots, want):
    cfg = AppConfig.model_validate({"engine": {"device": "cpu", "max_sessions": slots}, "max_ongoing_requests": given})
    assert cfg.ongoing_limit == want
    assert llm_deployment_options(cfg)["max_ongoing_requests"] == want


def test_ongoing_limit_is_bounded():
    with pytest.raises(ValidationError):
        AppConfig.model_validate({"max_ongoing_requests": 0})


def test_rebalance_settings_are_bounded_and_off_without_a_kv_budget():
    from deployments.config import RebalanceConfig
    from deployments.sessions.directory import directory_spec

    assert AppConfig().rebalance.enabled and directory_spec(AppConfig())["rebalance"]["enabled"]
    for bad in ({"max_sessions_per_period": 0}, {"slack_sessions": -1}, {"hold_s": 0}, {"slack_ratio": 11}, {"typo": 1}):
        with pytest.raises(ValidationError):
            RebalanceConfig(**bad)
    # no KV may travel: rebalancing would only ever rebuild, so the directory never asks for moves
    assert not directory_spec(AppConfig(kv_transfer_max_mb=0))["rebalance"]["enabled"]
    assert not directory_spec(AppConfig(rebalance={"enabled": False}))["rebalance"]["enabled"]
