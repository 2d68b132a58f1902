"""Scheduler on tiny fake turns: budget, decode-first fairness, chunking, admission."""

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.cache.pool import SlotAllocator
from swiftinfer_core.config import SamplingParams
from swiftinfer_core.engine.scheduler import Scheduler
from swiftinfer_core.engine.session import Session, Turn, TurnState

LAYOUT = StreamLayout(2, 8)


def turn(sid: str, n_input: int) -> Turn:
    return Turn(session=Session(sid, LAYOUT), params=SamplingParams(), to_feed=list(range(100, 100 + n_input)),
                prompt_tokens=n_input, detok=None, generator=None)


def make(slots=2, budget=8, chunk=4):
    alloc = SlotAllocator(slots)

    def allocate(t: Turn) -> bool:
        if t.session.slot is None:
            t.session.slot = alloc.allocate()
        return t.session.slot is not None

    return Scheduler(budget, chunk, allocate), alloc


def fed(batch):
    """Simulate the runner + postprocess: feed tokens, decode turns get one output each."""
    for s in batch.seqs:
        s.turn.session.fed(s.token_ids)
        if s.turn.state is TurnState.PREFILL:
            s.turn.prefilled += len(s.token_ids)
        if s.sample:
            s.turn.state = TurnState.DECODE
            s.turn.output_ids.append(7)


def test_chunks_and_budget():
    sch, _ = make(budget=6, chunk=4)
    a = turn("a", 10)
    sch.add(a)
    sizes = []
    while a.state is not TurnState.DECODE:
        b = sch.schedule()
        sizes.append([(s.turn.session.id, s.start, len(s.token_ids), s.sample) for s in b.seqs])
        fed(b)
    assert sizes == [[("a", 0, 4, False)], [("a", 4, 4, False)], [("a", 8, 2, True)]]
    assert a.session.slot == 0 and a.session.n == 10


def test_decodes_go_first_and_long_prompts_share_the_rest():
    sch, _ = make(slots=3, budget=5, chunk=4)
    a, b = turn("a", 1), turn("b", 20)
    sch.add(a)
    fed(sch.schedule())  # a: 1-token prompt done, now decoding
    sch.add(b)
    for _ in range(3):
        batch = sch.schedule()
        got = [(s.turn.session.id, len(s.token_ids)) for s in batch.seqs]
        assert got == [("a", 1), ("b", 4)]  # a's token every step; b gets what is left, at most a chunk
        assert batch.num_tokens <= 5
        fed(batch)


def test_admission_waits_for_a_slot_in_order():
    sch, alloc = make(slots=1, budget=8, chunk=8)
    a, b, c = turn("a", 3), turn("b", 3), turn("c", 3)
    for t in (a, b, c):
        sch.add(t)
    batch = sch.schedule()
    assert [s.turn.session.id for s in batch.seqs] == ["a"] and list(sch.waiting) == [b, c]
    assert b.state is TurnState.WAITING and alloc.free == 0
    sch.remove(a)
    alloc.release(a.session.slot)
    batch = sch.schedule()
    assert [s.turn.session.id for s in batch.seqs] == ["b"] and b.session.slot == 0 and list(sch.waiting) == [c]
