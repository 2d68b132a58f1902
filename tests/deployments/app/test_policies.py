"""Pure pieces without a cluster: the autoscaling policy on a real Serve
``AutoscalingContext``, history digests, request parsing, deployment options."""

from __future__ import annotations

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from deployments.app.builder import llm_deployment_options
from deployments.app.autoscaling import SessionAwarePolicy
from deployments.config import AppConfig
from deployments.sessions.history import HistoryView, prefix_digests
from deployments.http.openai_schema import ChatCompletionRequest
from swiftinfer_core.errors import InvalidRequestError

DEP = DeploymentID(name="LLMReplica", app_name="app")


def _ctx(replicas: int, ongoing: float, metrics: dict[str, list[float]]) -> AutoscalingContext:
    ids = [ReplicaID(unique_id=f"r{i}", deployment_id=DEP) for i in range(replicas)]
    return AutoscalingContext(
        deployment_id=DEP, deployment_name="LLMReplica", app_name="app", current_num_replicas=replicas,
        target_num_replicas=replicas, running_replicas=ids, total_num_requests=ongoing, total_queued_requests=0.0,
        aggregated_metrics={k: dict(zip(ids, v)) for k, v in metrics.items()}, raw_metrics={},
        capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=8, policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=None, config=AutoscalingConfig(),
    )


def test_policy_scales_on_the_largest_demand():
    policy = SessionAwarePolicy(target_ongoing_requests=4, target_active_sessions=10, target_kv_use=0.5)
    # requests alone want 1; 35 active sessions want 4
    assert policy(_ctx(2, 3, {"active_sessions": [20, 15], "kv_use": [0.2, 0.2]}))[0] == 4
    # KV pool 90% full on 2 replicas at target 50% wants 4
    assert policy(_ctx(2, 0, {"active_sessions": [1, 1], "kv_use": [0.9, 0.9]}))[0] == 4
    # idle: nothing active, little KV -> shrink
    assert policy(_ctx(3, 0, {"active_sessions": [0, 0, 0], "kv_use": [0.1, 0.1, 0.1]}))[0] == 1


def test_policy_never_shrinks_on_missing_replica_metrics():
    policy = SessionAwarePolicy(4, 10, 0.8)
    desired, state = policy(_ctx(3, 0, {"active_sessions": [0, 0], "kv_use": [0.0, 0.0]}))  # r2 not reporting
    assert desired == 3 and state["last_demand"]["sessions"] == 0


def test_request_target_defaults_to_the_replicas_slots_so_a_closed_loop_can_scale_down():
    # 48 closed-loop conversations (48 turns in flight), all on one of 3 replicas of 50 slots
    cfg = AppConfig.model_validate({"engine": {"device": "cpu", "max_sessions": 50},
                                    "scaling": {"min_replicas": 1, "max_replicas": 3, "target_active_sessions": 40}})
    auto = llm_deployment_options(cfg)["autoscaling_config"]
    assert auto["target_ongoing_requests"] == 0.8 * 50
    policy = SessionAwarePolicy(**auto["policy"]["policy_kwargs"])
    closed_loop = _ctx(3, 48, {"active_sessions": [48, 0, 0], "kv_use": [0.96, 0.0, 0.0]})
    assert policy(closed_loop)[0] == 2
    # Serve's generic 4 turns per replica asks for 12 (capped at max_replicas: all 3 stayed in the 7B ramp of 2026-12-03)
    assert SessionAwarePolicy(4, 40, 0.8)(closed_loop)[0] == 12
    explicit = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"target_ongoing_requests": 6.0})})
    assert llm_deployment_options(explicit)["autoscaling_config"]["target_ongoing_requests"] == 6.0


def test_history_split_and_digests():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    view = HistoryView.of(msgs)
    digests = prefix_digests(msgs)
    assert view.split == 3 and view.prefix_digest == digests[3] and view.full_digest == digests[4]
    assert HistoryView.of(msgs[:2]).prefix_digest is None  # nothing said by us yet: new conversation
    edited = msgs[:2] + [{"role": "assistant", "content": "B"}] + msgs[3:]
    assert HistoryView.of(edited).prefix_digest != view.prefix_digest
    assert HistoryView.of(edited).opening == view.opening  # same opening, so the same derived key family


def test_request_parsing_maps_openai_fields():
    req = ChatCompletionRequest.parse(
        b'{"model":"m","messages":[{"role":"developer","content":[{"type":"text","text":"be brief"}]},'
        b'{"role":"user","content":"hi"}],"max_completion_tokens":5,"stop":"\\n","seed":3,"temperature":0}'
    )
    assert req.engine_messages()[0] == {"role": "system", "content": "be brief"}
    p = req.sampling(256)
    assert (p.max_tokens, p.stop, p.seed, p.greedy) == (5, ["\n"], 3, True)
    with pytest.raises(InvalidRequestError, match="only text parts"):
        ChatCompletionRequest.parse(b'{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}').engine_messages()
    with pytest.raises(InvalidRequestError, match="tools"):
        ChatCompletionRequest.parse(b'{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}')


def test_request_parsing_maps_sampling_fields_for_chat_and_completions():
    from deployments.http.completions_schema import CompletionRequest

    req = ChatCompletionRequest.parse(
        b'{"model":"m","messages":[{"role":"user","content":"hi"}],"presence_penalty":0.5,"frequency_penalty":-1,'
        b'"logit_bias":{"12":-100,"7":2.5},"logprobs":true,"top_logprobs":3,"repetition_penalty":1.1,"min_tokens":2}'
    )
    p = req.sampling(8)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty, p.min_tokens) == (0.5, -1.0, 1.1, 2)
    assert p.logit_bias == {12: -100.0, 7: 2.5} and (p.logprobs, p.top_logprobs) == (True, 3)
    plain = ChatCompletionRequest.parse(b'{"model":"m","messages":[{"role":"user","content":"hi"}],"logprobs":false}').sampling(8)
    assert (plain.logprobs, plain.presence_penalty, plain.repetition_penalty, plain.logit_bias) == (False, 0.0, 1.0, {})
    for body, word in ((b'"logit_bias":{"a":1}', "logit_bias"), (b'"logit_bias":{"1":101}', "logit_bias"),
                       (b'"top_logprobs":2', "top_logprobs"), (b'"response_format":{"type":"xml"}', "response_format")):
        with pytest.raises(InvalidRequestError, match=word):
            ChatCompletionRequest.parse(b'{"model":"m","messages":[{"role":"user","content":"x"}],' + body + b"}")
    c = CompletionRequest.parse(b'{"model":"m","prompt":[[5,6]],"logprobs":0,"presence_penalty":1}')
    assert c.prompts() == [[5, 6]] and c.turns() == 1
    p = c.sampling(256)
    assert (p.max_tokens, p.logprobs, p.top_logprobs, p.presence_penalty) == (16, True, 0, 1.0)
    assert CompletionRequest.parse(b'{"model":"m","prompt":"hey"}').sampling(256).logprobs is False
    echo = CompletionRequest.parse(b'{"model":"m","prompt":"x","echo":true,"logprobs":2}').sampling(256)
    assert (echo.logprobs, echo.top_logprobs, echo.prompt_logprobs) == (True, 2, 2)
    assert CompletionRequest.parse(b'{"model":"m","prompt":"x","echo":true}').sampling(256).prompt_logprobs is None
    with pytest.raises(InvalidRequestError, match="suffix"):
        CompletionRequest.parse(b'{"model":"m","prompt":"x","suffix":"y"}')
    # batches: a list of texts or of token-id lists is one prompt each; a flat id list is one prompt
    assert CompletionRequest.parse(b'{"model":"m","prompt":["a","b","c"]}').prompts() == ["a", "b", "c"]
    assert CompletionRequest.parse(b'{"model":"m","prompt":[[1],[2,3]]}').turns() == 2
    assert CompletionRequest.parse(b'{"model":"m","prompt":[1,2,3]}').prompts() == [[1, 2, 3]]
    for body, word in ((b'["a",""]', r"prompt\[1\]: must not be empty"), (b'[[1],[]]', r"prompt\[1\]: must not be empty"),
                       (b'[[1],[-2]]', r"prompt\[1\]: token ids must be >= 0"), (b'[-1]', "prompt: token ids must be >= 0"),
                       (b'[' + b','.join([b'"a"'] * 129) + b']', "at most 128 prompts"), (b'[1,"a"]', "prompt")):
        with pytest.raises(InvalidRequestError, match=word):
            CompletionRequest.parse(b'{"model":"m","prompt":' + body + b"}")


def test_gpu_replica_options_place_tensor_parallel_ranks_together():
    cfg = AppConfig.model_validate({"engine": {"device": "cuda", "tp_size": 4}, "replica_cpus": 4})
    opts = llm_deployment_options(cfg)
    assert opts["ray_actor_options"]["num_gpus"] == 1
    assert opts["placement_group_bundles"] == [{"CPU": 4.0, "GPU": 1}] + [{"GPU": 1}] * 3
    assert opts["placement_group_strategy"] == "STRICT_PACK"
    # TensorRT-LLM's MPI ranks inherit the replica's GPUs: one bundle holding all of them.
    trt = llm_deployment_options(AppConfig.model_validate({"backend": "trtllm", "engine": {"device": "cuda", "tp_size": 4}, "replica_cpus": 4}))
    assert trt["ray_actor_options"]["num_gpus"] == 4 and trt["placement_group_bundles"] == [{"CPU": 4.0, "GPU": 4}]
    single = llm_deployment_options(AppConfig.model_validate({"engine": {"device": "cuda"}}))
    assert single["ray_actor_options"]["num_gpus"] == 1 and "placement_group_bundles" not in single
    shared = AppConfig.model_validate({"engine": {"device": "cuda"}, "gpu_share": 0.5})
    assert llm_deployment_options(shared)["ray_actor_options"]["num_gpus"] == 0.5
    assert shared.replica_engine.memory_share == 0.5 and shared.engine.memory_share == 1.0
    for bad in ({"engine": {"device": "cuda", "tp_size": 2}, "gpu_share": 0.5}, {"backend": "trtllm", "engine": {"device": "cuda"}, "gpu_share": 0.5}):
        with pytest.raises(ValueError, match="gpu_share"):
            AppConfig.model_validate(bad)
    cpu = llm_deployment_options(AppConfig.model_validate({"engine": {"device": "cpu"}, "scaling": {"min_replicas": 1, "max_replicas": 3}}))
    assert cpu["ray_actor_options"]["num_gpus"] == 0
    assert cpu["autoscaling_config"]["policy"]["policy_function"] is SessionAwarePolicy


def test_app_config_rejects_bad_values():
    for bad in ({"scaling": {"min_replicas": 3, "max_replicas": 2}}, {"unknown": 1}, {"engine": {"window": 2, "sink_tokens": 4}},
                {"scaling": {"look_back_period_s": 5, "metrics_interval_s": 10}}, {"router": "random"}):
        with pytest.raises(ValueError):
            AppConfig.model_validate(bad)
