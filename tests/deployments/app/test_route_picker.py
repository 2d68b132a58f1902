"""The route picker's reading of a request body (app/route_picker.py): only a whole JSON
body's own top-level ``session_id`` names a session; anything else routes by load."""

from __future__ import annotations

import json

from deployments.app.route_picker import BODY_MAX, body_session


def _body(**fields) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def test_the_top_level_session_id_names_the_session():
    assert body_session(_body(session_id="chat-7"), truncated=False) == "chat-7"


def test_no_id_a_cut_body_or_one_too_long_to_parse_names_none():
    assert body_session(_body(), truncated=False) is None
    assert body_session(b"", truncated=False) is None
    assert body_session(_body(session_id="chat-7"), truncated=True) is None  # HAProxy cut it at its buffer size
    long = _body(session_id="chat-7", messages=[{"role": "user", "content": "x" * BODY_MAX}])
    assert body_session(long, truncated=False) is None
    assert body_session(b'{"session_id": "chat-7", "messages": [', truncated=False) is None  # malformed: the replica's 400


def test_ids_elsewhere_in_the_body_or_not_strings_are_ignored():
    nested = _body(metadata={"session_id": "other"}, response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"properties": {"session_id": {"type": "string"}}}}})
    assert body_session(nested, truncated=False) is None
    assert body_session(_body(session_id=7), truncated=False) is None
    assert body_session(b'["session_id", "chat-7"]', truncated=False) is None


def test_a_responses_continuation_names_its_session():
    body = json.dumps({"model": "m", "input": "hi", "previous_response_id": "resp_conv-ab12.3"}).encode()
    assert body_session(body, truncated=False) == "conv-ab12"
    assert body_session(json.dumps({"input": "hi", "previous_response_id": "chatcmpl-1"}).encode(), truncated=False) is None
