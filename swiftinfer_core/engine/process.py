"""``ProcessEngine``: the native engine in its own process, behind ``EngineProtocol``.

In-process, the step thread and the replica's event loop (one stream per turn,
Ray's per-chunk work) share one GIL, so every token a replica sends slows the
next model step. Here the child (engine/child.py) runs the steps and the parent
only moves messages: one ``StepEvents`` per step reaches every stream of this
process through one reader thread and one wake-up per event loop.

The child dies with the parent: it exits when its command pipe closes. If the
child dies, every stream and call in flight fails with ``EngineClosedError``
and ``check_health`` raises, so Serve replaces the replica.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import multiprocessing as mp
import threading
import time
from concurrent.futures import Future
from typing import AsyncIterator

from swiftinfer_core.config import EngineConfig, SamplingParams
from swiftinfer_core.engine.child import run_child
from swiftinfer_core.engine.delivery import deliver_to_loops, read_stream
from swiftinfer_core.engine.handoff import Handoff
from swiftinfer_core.recent_times import RecentTimes
from swiftinfer_core.engine.ipc import AbortTurn, Call, EngineCall, Ready, Reply, StartTurn, StepEvents
from swiftinfer_core.errors import EngineClosedError
from swiftinfer_core.protocol import Absent, EngineStats, KVSnapshot, SessionRecord, SessionStats, SessionView, StreamChunk
from swiftinfer_core.protocol import EngineProtocol

log = logging.getLogger(__name__)
JOIN_S = 10.0


class ProcessEngine(EngineProtocol):
    def __init__(self, config: EngineConfig, cpu_threads: int = 1):
        self.config = config
        ctx = mp.get_context("spawn")  # CUDA cannot be forked; nothing of the parent's state is needed
        down_r, self._down = ctx.Pipe(duplex=False)
        self._up, up_w = ctx.Pipe(duplex=False)
        # not daemonic: a tensor-parallel engine starts processes of its own
        self._proc = ctx.Process(target=run_child, args=(config, cpu_threads, down_r, up_w), name="swiftinfer-engine")
        self._proc.start()
        down_r.close(), up_w.close()
        try:
            ready = self._up.recv()  # the model loads (and graphs are captured) meanwhile
        except EOFError:
            self._proc.join(JOIN_S)
            raise EngineClosedError(f"the engine process exited while starting (exit code {self._proc.exitcode})") from None
        if not isinstance(ready, Ready) or ready.error is not None:
            self._proc.join(JOIN_S)
            raise ready.error if isinstance(ready, Ready) else EngineClosedError(f"unexpected first message {ready!r}")
        self.pid = ready.pid
        self._ids = itertools.count()
        self._send_lock = threading.Lock()
        self._streams: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._calls: dict[int, Future] = {}
        self._closed: BaseException | None = None
        self._handoff = RecentTimes(Handoff)  # PIPE, WAKE
        self._reader = threading.Thread(target=self._read, name="swiftinfer-engine-reader", daemon=True)
        self._reader.start()
        atexit.register(self.close)

    # ---- streaming ----

    async def chat(self, session_id: str, messages: list[dict], params: SamplingParams | None = None,
                   expect: SessionRecord | Absent | None = None) -> AsyncIterator[StreamChunk]:
        """As ``Engine.chat``: errors of the turn's start raise at the first read."""
        queue: asyncio.Queue = asyncio.Queue()
        tid = next(self._ids)
        self._streams[tid] = (asyncio.get_running_loop(), queue)
        try:
            self._send(StartTurn(tid, session_id, messages, params or SamplingParams(), expect, time.monotonic()))
            async for chunk in read_stream(queue):
                yield chunk
        finally:  # consumer gone or done: the child drops (or aborts) the turn
            self._streams.pop(tid, None)
            if self._closed is None:
                try:
                    self._send(AbortTurn(tid))
                except EngineClosedError:
                    pass

    # ---- calls (blocking; a replica runs them in a thread) ----

    def _call(self, method: EngineCall, *args, timeout: float | None = None):
        fut: Future = Future()
        cid = next(self._ids)
        self._calls[cid] = fut
        try:
            self._send(Call(cid, method, args))
        except BaseException:
            self._calls.pop(cid, None)
            raise
        if self._closed is not None:  # the reader may have failed the calls before ours was added
            self._calls.pop(cid, None)
            raise self._closed_error()
        return fut.result(timeout)

    def stats(self) -> EngineStats:
        return self._call(EngineCall.STATS)

    def view(self, session_id: str) -> SessionView:
        return self._call(EngineCall.VIEW, session_id)

    def session_stats(self, session_id: str) -> SessionStats:
        return self._call(EngineCall.SESSION_STATS, session_id)

    def has_session(self, session_id: str) -> bool:
        return self._call(EngineCall.HAS_SESSION, session_id)

    def close_session(self, session_id: str) -> None:
        self._call(EngineCall.CLOSE_SESSION, session_id)

    def session_ids(self) -> list[str]:
        return self._call(EngineCall.SESSION_IDS)

    def slotless_ids(self) -> list[str]:
        return self._call(EngineCall.SLOTLESS_IDS)

    def export_session(self, session_id: str) -> SessionRecord:
        return self._call(EngineCall.EXPORT_SESSION, session_id)

    def import_session(self, record: SessionRecord) -> None:
        self._call(EngineCall.IMPORT_SESSION, record)

    def export_kv(self, session_id: str) -> KVSnapshot | None:
        return self._call(EngineCall.EXPORT_KV, session_id)

    def import_kv(self, snapshot: KVSnapshot) -> bool:
        return self._call(EngineCall.IMPORT_KV, snapshot)

    def checks_expect(self) -> bool:
        return True  # chat(..., expect=) (EngineCore.add_turn)

    def handoff_times(self) -> dict[Handoff, tuple[float, float]]:
        """Both sides' legs (blocking: one call the child's reader answers at once)."""
        return {**self._call(EngineCall.HANDOFF), **self._handoff.summary()}

    def check_health(self, timeout: float = 60.0) -> None:
        """Raise EngineClosedError when the child is gone or its engine stopped."""
        if self._closed is not None or not self._proc.is_alive():
            raise self._closed_error()
        self._call(EngineCall.CHECK_HEALTH, timeout=timeout)

    def inject_device_fault(self, sticky: bool = False) -> None:
        """Test-only (engine/faults.py): the child's next step faults."""
        self._call(EngineCall.INJECT_FAULT, sticky)

    async def shutdown(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Close the command pipe (the child shuts its engine down and exits) and wait."""
        if self._closed is None:
            self._closed = EngineClosedError("the engine is shut down")
        try:
            self._down.close()
        except OSError:
            pass
        self._proc.join(JOIN_S)
        if self._proc.is_alive():  # stuck in a step: do not hang the replica's exit
            log.warning("engine process %s did not exit; killing it", self.pid)
            self._proc.kill()
            self._proc.join(JOIN_S)
        atexit.unregister(self.close)

    # ---- the pipes ----

    def _send(self, message: object) -> None:
        if self._closed is not None:
            raise self._closed_error()
        try:
            with self._send_lock:
                self._down.send(message)
        except (OSError, ValueError) as exc:  # broken pipe (child gone) or closed handle
            raise EngineClosedError(f"the engine process is gone: {exc}") from None

    def _closed_error(self) -> EngineClosedError:
        err = self._closed
        code = self._proc.exitcode
        return err if isinstance(err, EngineClosedError) else EngineClosedError(f"the engine process exited (exit code {code})")

    def _read(self) -> None:
        try:
            while True:
                msg = self._up.recv()
                if isinstance(msg, StepEvents):
                    got = time.monotonic()
                    self._handoff.record(Handoff.PIPE, got - msg.sent_at)
                    self._deliver(msg.items, got)
                elif isinstance(msg, Reply):
                    fut = self._calls.pop(msg.call_id, None)
                    if fut is not None:
                        fut.set_exception(msg.error) if msg.error is not None else fut.set_result(msg.value)
        except (EOFError, OSError):
            pass
        except BaseException:
            log.exception("engine reader failed")
        finally:
            if self._closed is None:
                self._closed = EngineClosedError(f"the engine process exited (exit code {self._proc.exitcode})")
            self._fail_all(self._closed_error())

    def _deliver(self, items: list[tuple[int, object]], got: float | None = None) -> None:
        """One wake-up per event loop per step. A stream may end on its loop meanwhile:
        one lookup per item, not a check then a read. ``got``: when the reader had
        them (each loop's hand-over then times its wake-up)."""
        targets = [(self._streams.get(tid), item) for tid, item in items]
        woke = None if got is None else (lambda: self._handoff.since(Handoff.WAKE, got))
        deliver_to_loops([(*t, item) for t, item in targets if t is not None], woke)

    def _fail_all(self, error: EngineClosedError) -> None:
        for cid in list(self._calls):
            fut = self._calls.pop(cid, None)
            if fut is not None and not fut.done():
                fut.set_exception(error)
        self._deliver([(tid, error) for tid in list(self._streams)])

