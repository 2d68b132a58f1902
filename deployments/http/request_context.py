"""Concurrent handle calls made for one HTTP request each need a request id of their own.

Ray Serve (2.60) stamps every handle call with the internal id of the request it
runs under (``ray.serve.context``), and its router indexes pending calls by that
id. A second call of the same request pending at the same time is never assigned
to a replica: it waits until its caller gives up, and calls queued behind it at
that router wait too. The ingress makes such calls for a batch of prompts (one
turn per prompt, started together) and when it deletes their one-call sessions
afterwards. Each runs in a task of its own (asyncio copies the context into it)
that calls ``own_request_id`` first. Private Serve API; the batch test in
tests/deployments/http/test_openai_fields.py hangs without it.
"""

from __future__ import annotations

from dataclasses import replace

from ray.serve import context as serve_context
from ray.serve._private.utils import generate_request_id


def own_request_id() -> None:
    """A fresh internal request id for the handle calls of the current task's context."""
    ctx = serve_context._get_serve_request_context()
    serve_context._serve_request_context.set(replace(ctx, _internal_request_id=generate_request_id()))
