"""Multi-round sessions on an engine that keeps no per-conversation cache.

TensorRT-LLM's LLM API (0.15 through 1.0) starts every ``generate_async`` call
from an empty sequence: there is no handle to continue a request's KV cache in
a later call. KV block reuse (prefix caching) cannot stand in for it either: it
is off with the cyclic StreamingLLM cache, and a rolling window changes the
prefix of every round anyway.

So the adapter keeps the conversation's own token stream exactly as the native
engine's cache would hold it (a ``Conversation``, conversation/stream.py: the first ``sinks`` tokens plus a
ring of the ``window`` most recent ones, and the ``pending`` tokens not yet
fed: the last sampled token and the template's closing). Each round submits

    prompt = sinks + window (after feeding the pending tokens) + new turn

and afterwards advances the stream by what the round fed and generated.

Cost: every round prefills up to ``sinks + window`` history tokens again before
its new turn (the native engine prefills only the new turn).
Fidelity: the history the model sees is the same set of tokens as in the native
cache; TensorRT-LLM's context phase is dense, so the new turn's tokens also see
each other and the whole resubmitted window (a superset of what the native
chunked prefill shows them), and positions start at 0 for the first sink.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from swiftinfer_core.conversation.stream import Conversation


def round_prompt(session: Conversation, new_ids: list[int]) -> list[int]:
    """Token ids to submit for a round: the cache after feeding ``pending``, then ``new_ids``."""
    probe = Conversation(session.id, session.layout)
    probe.n = session.n
    probe.sink_ids = list(session.sink_ids)
    probe.window_ids = deque(session.window_ids, maxlen=session.layout.window)
    probe.fed(session.pending)
    return probe.cached_ids() + list(new_ids)


def close_round(session: Conversation, new_ids: list[int], output_ids: list[int], after_reply: Callable[[int], list[int]]) -> None:
    """Advance the stream after a round (finished, stopped or aborted).

    With output, the pending tokens, the new turn and every sampled token but
    the last were fed; the last one and the template's closing become pending
    (as in the native engine, where the last sampled token is never fed in its
    own round). Without output nothing was kept by the engine: the turn's input
    stays pending for the next round."""
    if output_ids:
        session.fed(session.pending + list(new_ids) + list(output_ids[:-1]))
        session.pending = after_reply(output_ids[-1])
    else:
        session.pending = session.pending + list(new_ids)
    session.generated_tokens += len(output_ids)
    session.rounds += 1
