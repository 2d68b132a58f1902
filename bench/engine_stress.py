"""Engine churn: many conversations over few cache slots, with every session
operation a replica performs, and the engine's invariants checked after each step.

    python bench/engine_stress.py --model /path/to/cfg --layers 2 --slots 128 --sessions 256 --steps 3000 --out DIR

Per step, at random: new turns of idle conversations (prompts of 1..``max_prompt``
words, so prefill chunks, ring wrap inside a chunk and rebuilds of full windows
all happen), aborts of running turns, closes, rebuilds from the record
(export_session -> import_session) and KV hand-overs (export_kv -> import_kv).
More conversations than slots makes the scheduler lend slots of idle ones (LRU).

On a GPU each step is synchronised, so a device fault names its step; the
batch that ran (slots, starts, lengths, graph or eager) is in the report.
With ``CUDA_LAUNCH_BLOCKING=1`` the traceback names the kernel. Importable:
``churn(core, Churn(...))`` (tests/engine/test_stress.py runs it on CPU).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.shape_config import make_config_dir  # noqa: E402
from swiftinfer_core.config import SamplingParams  # noqa: E402
from swiftinfer_core.engine.core import EngineCore  # noqa: E402
from swiftinfer_core.engine.session import TurnState  # noqa: E402

WORDS = "river stone light garden letter winter morning castle silver harbour forest candle window music".split()


@dataclass
class Churn:
    sessions: int = 16
    steps: int = 300
    max_prompt: int = 300  # words per new message
    max_tokens: int = 48
    p_turn: float = 0.5  # chance per step that an idle conversation gets a new turn
    p_abort: float = 0.01
    p_close: float = 0.005
    p_rebuild: float = 0.02
    p_handover: float = 0.02
    system_words: int = 0  # > 0: a new conversation's first turn starts with one shared system message this long
    seed: int = 0


@dataclass
class ChurnReport:
    steps: int = 0
    turns_started: int = 0
    turns_finished: int = 0
    aborts: int = 0
    closes: int = 0
    rebuilds: int = 0
    handovers: int = 0
    handovers_refused: int = 0
    slot_lends: int = 0
    wrapped_prefills: int = 0  # prefill chunks that crossed the ring's end
    max_chunk: int = 0
    max_batch_seqs: int = 0
    graph_steps: int = 0
    eager_steps: int = 0
    mixed_steps: int = 0  # decode rows by graph, prefill chunks eagerly
    step_ms: dict = field(default_factory=dict)  # path -> {n, mean, p50, p99} of step wall time (synced steps only)
    tokens_generated: int = 0
    tokens_prefilled: int = 0
    failure: str = ""
    failed_batch: dict = field(default_factory=dict)


def check_invariants(core: EngineCore) -> None:
    """Raise AssertionError naming the first broken invariant."""
    lay, pool = core.layout, core.pool
    resident = [s for s in core.sessions.values() if s.slot is not None]
    slots = [s.slot for s in resident]
    if len(set(slots)) != len(slots):
        raise AssertionError(f"two sessions share a slot: {sorted(slots)}")
    if any(not 0 <= x < pool.num_slots for x in slots):
        raise AssertionError(f"slot out of range: {slots}")
    templates = [t.slot for t in core.prefix.templates] if core.prefix is not None else []
    if set(templates) & set(slots) or len(set(templates)) != len(templates):
        raise AssertionError(f"a prefix template's slot is in use twice: templates {templates}, sessions {sorted(slots)}")
    if pool.slots.free + len(resident) + len(templates) != pool.num_slots:
        raise AssertionError(f"free {pool.slots.free} + resident {len(resident)} + templates {len(templates)} != {pool.num_slots}")
    for s in core.sessions.values():
        if len(s.sink_ids) + len(s.window_ids) != lay.fill(s.n):
            raise AssertionError(f"{s.id}: ids {len(s.sink_ids)}+{len(s.window_ids)} vs fill({s.n})")
        if s.slot is None and s.n:
            raise AssertionError(f"{s.id}: no slot but n={s.n}")
    for t in core.scheduler.running:
        if t.session.slot is None or t.session.turn is not t:
            raise AssertionError(f"running turn of {t.session.id} without its slot or session link")


def _describe(batch, graphs) -> dict:
    seqs = batch.seqs
    decode = sum(1 for s in seqs if len(s.token_ids) == 1 and s.turn.state.name == "DECODE")
    path = "eager" if graphs is None or not decode or not graphs.fits(decode) else "graph" if decode == len(seqs) else "graph+eager"
    return {"path": path,
            "slots": [s.turn.session.slot for s in seqs], "starts": [s.start for s in seqs],
            "lens": [len(s.token_ids) for s in seqs], "states": [s.turn.state.name for s in seqs]}


def churn(core: EngineCore, spec: Churn, sync=None) -> ChurnReport:
    """Drive ``core`` for ``spec.steps`` steps; ``sync`` (e.g. torch.cuda.synchronize) after each."""
    rng = random.Random(spec.seed)
    rep = ChurnReport()
    ids = [f"c{i}" for i in range(spec.sessions)]
    cap, sinks = core.layout.capacity, core.layout.sinks
    last: dict = {}  # the batch of the step in progress
    times: dict[str, list[float]] = {}
    run = core.batches.launch

    def traced(batch):
        last.clear()
        last.update(_describe(batch, getattr(core.runner, "graphs", None)))
        for s in batch.seqs:  # the torch path would wrap a slot of -1 around silently; check before it runs
            if s.turn.session.slot is None or not 0 <= s.turn.session.slot < core.pool.num_slots:
                raise AssertionError(f"scheduled {s.turn.session.id} with slot {s.turn.session.slot}")
            if s.start != s.turn.session.n:
                raise AssertionError(f"{s.turn.session.id}: start {s.start} != n {s.turn.session.n}")
        for s in batch.seqs:
            if len(s.token_ids) > 1:
                rep.max_chunk = max(rep.max_chunk, len(s.token_ids))
                end = s.start + len(s.token_ids)
                if end > cap and (s.start - sinks) // core.layout.window != (end - 1 - sinks) // core.layout.window:
                    rep.wrapped_prefills += 1
        rep.max_batch_seqs = max(rep.max_batch_seqs, len(batch.seqs))
        rep.graph_steps += last["path"] == "graph"
        rep.eager_steps += last["path"] == "eager"
        rep.mixed_steps += last["path"] == "graph+eager"
        return run(batch)

    core.batches.launch = traced
    lends0 = core.slots.lends
    system = " ".join(WORDS[i % len(WORDS)] for i in range(spec.system_words))
    try:
        for step in range(spec.steps):
            for sid in ids:
                s = core.sessions.get(sid)
                busy = s is not None and s.turn is not None
                if busy:
                    if rng.random() < spec.p_abort and s.turn.state is not TurnState.DONE:
                        core.abort(s.turn)
                        rep.aborts += 1
                    continue
                if s is not None and rng.random() < spec.p_close:
                    core.close_session(sid)
                    rep.closes += 1
                elif s is not None and rng.random() < spec.p_rebuild:
                    core.import_session(core.export_session(sid))
                    rep.rebuilds += 1
                elif s is not None and s.slot is not None and rng.random() < spec.p_handover:
                    snap = core.export_kv(sid)
                    if snap is not None:
                        core.close_session(sid)
                        ok = core.import_kv(snap)
                        if not ok:  # as a replica does: rebuild from the record instead
                            core.import_session(snap.record)
                        rep.handovers += ok
                        rep.handovers_refused += not ok
                if rng.random() < spec.p_turn:
                    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, spec.max_prompt)))
                    params = SamplingParams(max_tokens=rng.randint(1, spec.max_tokens), ignore_eos=True,
                                            temperature=rng.choice([0.0, 0.8]), top_p=rng.choice([1.0, 0.9]))
                    opening = [{"role": "system", "content": system}] if system and s is None else []
                    core.add_turn(sid, opening + [{"role": "user", "content": words}], params)
                    rep.turns_started += 1
            t0 = time.perf_counter()
            events = core.step()
            if sync is not None:
                sync()
                if last:
                    times.setdefault(last["path"], []).append((time.perf_counter() - t0) * 1e3)
            last.clear()
            rep.turns_finished += sum(1 for e in events if e.chunk.final)
            rep.steps = step + 1
            check_invariants(core)
    except Exception as exc:  # a report, not a crash: the caller decides
        rep.failure = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        rep.failed_batch = dict(last)
        traceback.print_exc()
    finally:
        core.batches.launch = run
        rep.slot_lends = core.slots.lends - lends0
    for path, ms in times.items():
        ms.sort()
        rep.step_ms[path] = {"n": len(ms), "mean": sum(ms) / len(ms), "p50": ms[len(ms) // 2], "p99": ms[int(0.99 * (len(ms) - 1))]}
    st = core.stats()
    rep.tokens_generated, rep.tokens_prefilled = st.tokens_generated, st.tokens_prefilled
    return rep


def main(argv: list[str] | None = None) -> int:
    import torch

    from bench.common import write_results  # date, command, device, versions
    from swiftinfer_core.config import EngineConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="config folder (config.json + tokenizer); weights are random")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--slots", type=int, default=128)
    p.add_argument("--window", type=int, default=1020)
    p.add_argument("--sessions", type=int, default=256)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--max-prompt", type=int, default=600)
    p.add_argument("--p-turn", type=float, default=0.5)
    p.add_argument("--p-abort", type=float, default=0.01)
    p.add_argument("--no-sync", action="store_true", help="no device sync per step (as a server runs)")
    p.add_argument("--name", default="engine_stress")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: $OUT, else bench/results")
    a = p.parse_args(argv)
    model = make_config_dir(Path(a.model), Path("/tmp") / f"stress-{a.layers}l", num_hidden_layers=a.layers)
    cfg = EngineConfig(model=str(model), load_format="random", device="cuda", dtype="bfloat16",
                       window=a.window, max_sessions=a.slots)
    t0 = time.time()
    core = EngineCore(cfg)
    spec = Churn(sessions=a.sessions, steps=a.steps, max_prompt=a.max_prompt, p_turn=a.p_turn, p_abort=a.p_abort, seed=a.seed)
    rep = churn(core, spec, sync=None if a.no_sync else torch.cuda.synchronize)
    torch.cuda.synchronize()
    write_results(a.name, {"wall_s": round(time.time() - t0, 1), "spec": asdict(spec),
                           "config": cfg.model_dump(mode="json"), "report": asdict(rep)}, a.out)
    print(json.dumps(asdict(rep)))
    return 1 if rep.failure else 0


if __name__ == "__main__":
    sys.exit(main())
