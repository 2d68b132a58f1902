"""The engine process: an ``Engine`` whose streams go up a pipe (engine/process.py).

The main thread reads commands into the engine's inbox: turn starts, aborts and
calls alike, applied by the step thread between two steps, so a call waits at
most for the step in progress however many arrive together. The step thread sends one ``StepEvents`` per
step. When the command pipe closes (the parent exited or was killed) the engine
shuts down and the process ends, so it never outlives its replica.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from swiftinfer_core.config import EngineConfig
from swiftinfer_core.engine import faults
from swiftinfer_core.engine.engine import Engine, _Submission
from swiftinfer_core.engine.handoff import Handoff
from swiftinfer_core.recent_times import RecentTimes
from swiftinfer_core.engine.ipc import AbortTurn, Call, EngineCall, Ready, Reply, StartTurn, StepEvents, portable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Remote:
    """A turn's output: its id in the parent."""

    turn_id: int


class _PipeEngine(Engine):
    def __init__(self, config: EngineConfig, events: Connection):
        self._events = events
        self._send_lock = threading.Lock()
        self.turns: dict[int, _Submission] = {}
        self.handoff = RecentTimes(Handoff)  # START, QUEUE, FIRST (engine/handoff.py)
        self._read_at: dict[int, float] = {}  # turn id -> when the reader had its start (until the step thread takes it)
        self._taken_at: dict[int, float] = {}  # turn id -> when the step thread took it (until its first item)
        super().__init__(config)

    def received(self, start: StartTurn) -> None:
        now = time.monotonic()
        self.handoff.record(Handoff.START, now - start.sent_at)
        self._read_at[start.turn_id] = now

    def _add(self, sub: _Submission) -> None:
        now = time.monotonic()
        read_at = self._read_at.pop(sub.out.turn_id, None)
        if read_at is not None:
            self.handoff.record(Handoff.QUEUE, now - read_at)
            self._taken_at[sub.out.turn_id] = now
        super()._add(sub)

    def _abort(self, sub: _Submission) -> None:
        self._read_at.pop(sub.out.turn_id, None)
        self._taken_at.pop(sub.out.turn_id, None)
        super()._abort(sub)

    def send(self, message: object) -> None:
        with self._send_lock:
            self._events.send(message)

    def _deliver_all(self, items: list) -> None:
        payload = []
        now = time.monotonic()
        for turn, item in items:
            tid = turn.out.turn_id
            taken_at = self._taken_at.pop(tid, None)
            if taken_at is not None and not isinstance(item, BaseException):
                self.handoff.record(Handoff.FIRST, now - taken_at)
            payload.append((tid, portable(item) if isinstance(item, BaseException) else item))
            if isinstance(item, BaseException) or item.final:
                self.turns.pop(tid, None)
        if payload:
            try:
                self.send(StepEvents(payload, time.monotonic()))
            except OSError:  # the parent is gone; nobody is left to tell
                log.debug("dropped %d events: the parent's pipe is closed", len(payload))


def _methods(engine: _PipeEngine) -> dict[EngineCall, object]:
    """Each call's core method, run by the step thread between two steps (the
    engine lock is held there); health is read without the lock."""
    core = engine.core
    return {
        EngineCall.STATS: core.stats, EngineCall.VIEW: core.view, EngineCall.SESSION_STATS: core.session_stats,
        EngineCall.HAS_SESSION: core.has_session, EngineCall.CLOSE_SESSION: core.close_session,
        EngineCall.SESSION_IDS: core.session_ids, EngineCall.SLOTLESS_IDS: core.slotless_ids,
        EngineCall.EXPORT_SESSION: core.export_session,
        EngineCall.IMPORT_SESSION: core.import_session, EngineCall.EXPORT_KV: core.export_kv,
        EngineCall.IMPORT_KV: core.import_kv,
        EngineCall.INJECT_FAULT: lambda sticky=False: faults.arm(core.batches, sticky),
    }


def _answer(engine: _PipeEngine, methods: dict, call: Call) -> None:
    try:
        reply = Reply(call.call_id, methods[call.method](*call.args))
    except BaseException as exc:
        reply = Reply(call.call_id, error=portable(exc))
    try:
        engine.send(reply)
    except OSError:  # the parent is gone
        pass
    except Exception as exc:  # an unpicklable value is a bug here, not the caller's: answer with it
        engine.send(Reply(call.call_id, error=portable(RuntimeError(f"reply not sendable: {exc!r}"))))


def run_child(config: EngineConfig, cpu_threads: int, commands: Connection, events: Connection) -> None:
    """Process entry point (spawned)."""
    logging.basicConfig(level=logging.INFO)
    if config.device.value != "cuda":
        import torch

        torch.set_num_threads(cpu_threads)
    try:
        engine = _PipeEngine(config, events)
        engine.warm_up()  # ready means warm: no turn pays for kernel compilation
    except BaseException as exc:  # bad config, model missing, out of memory: the parent raises it
        events.send(Ready(os.getpid(), portable(exc)))
        return
    engine.send(Ready(os.getpid()))
    methods = _methods(engine)
    try:
        while True:
            try:
                msg = commands.recv()
            except (EOFError, OSError):  # the parent is gone
                break
            if isinstance(msg, StartTurn):
                engine.received(msg)
                sub = _Submission(msg.session_id, msg.messages, msg.params, _Remote(msg.turn_id), None, msg.expect)
                engine.turns[msg.turn_id] = sub
                try:
                    engine._submit(sub)
                except Exception as exc:  # closed engine: the stream ends with the error
                    engine._deliver_all([(sub, exc)])
            elif isinstance(msg, AbortTurn):
                sub = engine.turns.pop(msg.turn_id, None)
                if sub is not None:
                    engine._post(lambda sub=sub: engine._abort(sub))
            elif isinstance(msg, Call) and msg.method in (EngineCall.CHECK_HEALTH, EngineCall.HANDOFF):
                _answer(engine, {EngineCall.CHECK_HEALTH: engine.check_health, EngineCall.HANDOFF: engine.handoff.summary}, msg)
            elif isinstance(msg, Call):
                # into the inbox with the starts: every call waiting at a step boundary is
                # answered there at once, in the order posted (a start before a view is seen by it)
                engine._post(lambda msg=msg: _answer(engine, methods, msg))
    finally:
        engine.close()
