"""Conversation identity for clients that resend the whole history without an id.

A conversation is a chain of messages. Its digest is a hash chain over
canonical messages, ``d_0 = H("")``, ``d_i = H(d_{i-1} || canon(m_i))``, so the
digest of any prefix is computed in one pass. After every turn the session
directory stores the digest of everything the session has seen *including the
reply we produced*; a later request whose prefix (up to its last assistant
message) has that digest continues the session, and only the suffix goes to
the engine. Anything else starts a new conversation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_SEP = "\x1f"  # unit separator: cannot appear in a role, rarely in text


def canonical(message: dict) -> str:
    """``role␟name␟content`` of a normalised message (content already text)."""
    return _SEP.join((message["role"], message.get("name") or "", message["content"]))


def chain(digest: str, message: dict) -> str:
    return hashlib.sha256((digest + _SEP + canonical(message)).encode()).hexdigest()


EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()


def prefix_digests(messages: list[dict], seed: str = EMPTY_DIGEST) -> list[str]:
    """``[d_0, d_1, ..., d_n]`` for ``n`` messages; ``d_0 = seed`` (a tenant's own:
    tenants.history_seed)."""
    out = [seed]
    for m in messages:
        out.append(chain(out[-1], m))
    return out


def opening_key(messages: list[dict]) -> str:
    """16 hex chars naming a conversation by its opening: every message up to and
    including the first user message."""
    h = hashlib.sha256()
    for m in messages:
        h.update((canonical(m) + _SEP).encode())
        if m["role"] == "user":
            break
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class HistoryView:
    """What the ingress needs to resolve an id-less request.

    ``prefix_digest`` covers ``messages[:split]``, where ``split`` is one past the
    last assistant message (0 when there is none: nothing to continue);
    ``full_digest`` covers all messages and is the base the replica extends with
    its reply before committing.
    """

    opening: str
    split: int
    prefix_digest: str | None
    full_digest: str

    @classmethod
    def of(cls, messages: list[dict], seed: str = EMPTY_DIGEST) -> "HistoryView":
        digests = prefix_digests(messages, seed)
        split = 0
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                split = i + 1
        return cls(
            opening=opening_key(messages),
            split=split,
            prefix_digest=digests[split] if split else None,
            full_digest=digests[-1],
        )
