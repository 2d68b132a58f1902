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
