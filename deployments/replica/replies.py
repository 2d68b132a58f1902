"""What a replica keeps of a turn's stream for the session log: each choice's text
and finish reason (``SamplingParams.n``; one choice unless asked for more).

Choice 0 is the session's reply: its text extends the history digest of
id-less clients and is the committed turn's text. The other choices are kept
only as ``ChoiceReply`` records, so that a retry of the turn (its
Idempotency-Key) is answered with every choice again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deployments.messages import ChoiceReply
from swiftinfer_core.protocol import StreamChunk


@dataclass
class Replies:
    texts: dict[int, list[str]] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)

    def add(self, chunk: StreamChunk) -> None:
        self.texts.setdefault(chunk.index, []).append(chunk.text)
        if chunk.finish_reason is not None:
            self.finish[chunk.index] = chunk.finish_reason

    def text(self, index: int = 0) -> str:
        return "".join(self.texts.get(index, []))

    def others(self) -> tuple[ChoiceReply, ...]:
        """Choices 1..n-1, by index."""
        return tuple(ChoiceReply(i, self.text(i), self.finish[i]) for i in sorted(self.finish) if i != 0)

    @staticmethod
    def replayed(text: str, finish_reason: str, others: tuple[ChoiceReply, ...]) -> list[StreamChunk]:
        """A committed turn's choices as chunks, choice 0's last (it carries the usage: the caller adds it)."""
        return [StreamChunk(o.text, [], o.finish_reason, index=o.index) for o in others] + [StreamChunk(text, [], finish_reason)]
