"""engine/delivery.py: chunks waiting on a turn's queue merge into one per choice, never past an error."""

import asyncio

from swiftinfer_core.engine.delivery import coalesce
from swiftinfer_core.protocol import StreamChunk, Usage


def test_coalesce_merges_only_what_is_already_queued():
    async def go():
        q: asyncio.Queue = asyncio.Queue()
        first = StreamChunk("a", [1])
        alone = coalesce(first, q)  # nothing behind it: returned as is
        for c in (StreamChunk("b", [2]), StreamChunk("c", [3], "length", Usage(1, 3, 1, 0))):
            q.put_nowait(c)
        (merged,), err = coalesce(first, q)
        q.put_nowait(StreamChunk("d", [4]))
        q.put_nowait(ValueError("boom"))
        q.put_nowait(StreamChunk("never", [9]))
        (cut,), pending = coalesce(StreamChunk("x", [8]), q)
        left = q.qsize()
        q.get_nowait()
        for c in (StreamChunk("b0", [5]), StreamChunk("c1", [6], "stop", index=1), StreamChunk("d0", [7], "length", Usage(1, 3, 1, 0))):
            q.put_nowait(c)
        choices, _ = coalesce(StreamChunk("a1", [4], index=1), q)
        return alone, merged, err, cut, pending, left, choices

    alone, merged, err, cut, pending, left, choices = asyncio.run(go())
    assert alone == ([StreamChunk("a", [1])], None)

    assert (merged.text, merged.token_ids, merged.finish_reason, err) == ("abc", [1, 2, 3], "length", None)
    assert merged.usage.completion_tokens == 3
    assert (cut.text, cut.token_ids, cut.finish_reason, str(pending)) == ("xd", [8, 4], None, "boom")
    assert left == 1  # stops at the error: nothing after it is taken
    # several choices: one chunk each, in order of first appearance, the turn's final chunk last
    assert [(c.index, c.text, c.token_ids, c.finish_reason) for c in choices] == [(1, "a1c1", [4, 6], "stop"), (0, "b0d0", [5, 7], "length")]
    assert choices[-1].final and not choices[0].final
