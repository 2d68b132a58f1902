"""The public engine: ``EngineProtocol`` over an ``EngineCore`` driven by one thread.

The step loop runs in a background thread so the event loop of the caller (a
Serve replica, the CLI) stays free; chunks reach each caller's async generator
through its own asyncio queue. Every API call takes the same lock as a step
(core_calls.py), so the core is never touched by two threads at once.

Starting and aborting a turn never wait for that lock: they go into an inbox
that the step thread applies before its next step (and any locked API call
applies before its own work, so the order callers see is the order they
posted). A replica's event loop, which carries every stream of the replica,
therefore never blocks behind a model step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator

import torch

from swiftinfer_core.config import EngineConfig, SamplingParams
from swiftinfer_core.engine.core import EngineCore
from swiftinfer_core.engine.core_calls import CoreCalls
from swiftinfer_core.engine.delivery import deliver_to_loops, read_stream
from swiftinfer_core.engine.session import Turn
from swiftinfer_core.errors import EngineClosedError
from swiftinfer_core.runner.resolve import torch_device
from swiftinfer_core.protocol import Absent, SessionRecord, StreamChunk
from swiftinfer_core.protocol import EngineProtocol

log = logging.getLogger(__name__)


@dataclass
class _Submission:
    """A turn posted to the inbox; ``turn`` is set once the step thread added it."""

    session_id: str
    messages: list
    params: SamplingParams
    out: object  # asyncio.Queue (with ``loop``) or queue.Queue
    loop: asyncio.AbstractEventLoop | None
    expect: SessionRecord | Absent | None = None  # start only on this exact resident copy, or with none (EngineCore.add_turn)
    turn: Turn | None = None


class Engine(CoreCalls, EngineProtocol):
    def __init__(self, config: EngineConfig | None = None, core: EngineCore | None = None):
        self.config = config or EngineConfig()
        # On a CPU the step thread builds the core and warms it up, so that every
        # torch op of a CPU engine runs on that one thread: a second thread's OpenMP
        # pool (the constructing thread's, from the ops of loading) makes libgomp
        # count more threads than cores, and it then sleeps between parallel regions
        # (default model, int8, 2 threads, 74-token prompt: first token 250 ms with
        # the load on the caller's thread, 120 ms on the step thread).
        self._on_cpu = torch_device(self.config).type == "cpu"
        self.core = core if core is not None or self._on_cpu else EngineCore(self.config)
        build = threading.Event() if self.core is None else None
        self._build_error: BaseException | None = None
        self._lock = threading.Lock()  # held by a step, or by one API call between steps
        self._gate = threading.Condition()
        self._callers = 0  # API calls waiting for the lock
        self._inbox: deque[Callable[[], None]] = deque()  # turn starts and aborts, applied under the lock
        self._wake = threading.Event()
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, args=(build,), name="swiftinfer-engine", daemon=True)
        self._thread.start()
        if build is not None:
            build.wait()
            if self._build_error is not None:
                raise self._build_error

    # ---- streaming ----

    async def chat(self, session_id: str, messages: list[dict], params: SamplingParams | None = None,
                   expect: SessionRecord | Absent | None = None) -> AsyncIterator[StreamChunk]:
        """Append the new ``messages`` to the session and stream the reply. With
        ``expect`` the first read raises StaleSessionError unless the engine holds
        exactly that record in a cache slot (``ABSENT``: unless it holds no copy)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        sub = self._submit(_Submission(session_id, messages, params or SamplingParams(), queue, loop, expect))
        try:
            async for chunk in read_stream(queue):
                yield chunk
        finally:  # consumer gone (disconnect, cancel) or done: never leave the turn holding its session
            self._post(lambda: self._abort(sub))

    def chat_sync(self, session_id: str, messages: list[dict], params: SamplingParams | None = None) -> Iterator[StreamChunk]:
        """Blocking variant for scripts and the CLI."""
        import queue as _q

        box: _q.Queue = _q.Queue()
        sub = self._submit(_Submission(session_id, messages, params or SamplingParams(), box, None))
        try:
            while True:
                item = box.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.final:
                    return
        finally:
            self._post(lambda: self._abort(sub))

    def _submit(self, sub: _Submission) -> _Submission:
        """Post the turn; errors of ``add_turn`` (bad input, busy session) arrive
        as the first item of its queue, so the caller's first read raises them."""
        self._raise_if_closed()
        self._post(lambda: self._add(sub))
        return sub

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is shut down" + (f" after an error: {self._error}" if self._error else ""))

    def _post(self, command: Callable[[], None]) -> None:
        self._inbox.append(command)  # deque.append is atomic: no lock, never blocks
        self._wake.set()
        if self._closed:  # the step thread is gone or going: apply it here
            with self._lock:
                self._apply_inbox()

    def _apply_inbox(self) -> None:
        """Under the lock: apply posted starts and aborts in the order they came."""
        while self._inbox:
            command = self._inbox.popleft()
            try:
                command()
            except Exception:  # one caller's bookkeeping must not stop the loop or fail another caller
                log.exception("engine inbox command failed")

    def _add(self, sub: _Submission) -> None:
        try:
            self._raise_if_closed()
            turn = self.core.add_turn(sub.session_id, sub.messages, sub.params, sub.expect)
        except Exception as exc:  # the caller's mistake (or a closed engine): its stream raises it
            self._deliver_all([(sub, exc)])
            return
        turn.out, turn.loop = sub.out, sub.loop
        sub.turn = turn

    def _abort(self, sub: _Submission) -> None:
        if sub.turn is not None:
            self.core.abort(sub.turn)

    # ---- the loop thread ----

    def _loop(self, build: threading.Event | None = None) -> None:
        if build is not None:
            try:
                self.core = EngineCore(self.config)
            except BaseException as exc:  # bad config, missing model: __init__ raises it
                self._build_error, self._closed = exc, True
                return
            finally:
                build.set()
        try:
            self._run_steps()
        except BaseException as exc:  # a bug in the loop itself: fail every waiting caller, never strand one
            log.exception("engine loop crashed")
            self._error, self._closed = exc, True
            with self._lock:
                self._fail_running(EngineClosedError(f"engine loop crashed: {exc!r}"))
            raise
        finally:
            with self._lock:  # starts posted before the stop fail as closed
                self._apply_inbox()

    def _run_steps(self) -> None:
        while not self._closed:
            if not self._wake.wait(timeout=0.5):
                continue
            with self._gate:  # API callers queued behind the last step go first (bounded: 50 ms)
                self._gate.wait_for(lambda: not self._callers, timeout=0.05)
            with self._lock:
                self._apply_inbox()
                if not self.core.has_work:
                    self._wake.clear()
                    if self._inbox:  # posted after the drain: its _post may have set wake before our clear
                        self._wake.set()
                    continue
                try:
                    events = self.core.step()
                except Exception as exc:  # a model failure fails the turns in flight, not the process
                    log.exception("engine step failed")
                    if _poisons_device(exc):  # every later step would fail too: stop taking turns
                        self._error, self._closed = exc, True
                    self._fail_running(EngineClosedError(f"engine step failed: {exc}"))
                    continue
            self._deliver_all([(ev.turn, ev.chunk) for ev in events])

    @staticmethod
    def _deliver_all(items: list[tuple[Turn, object]]) -> None:
        """One cross-thread wake-up per event loop per step, not one per token: at
        batch 64 that is 64x fewer self-pipe writes into the replica's loop."""
        on_loops = []
        for turn, item in items:
            if turn.loop is None:
                turn.out.put(item)
            else:
                on_loops.append((turn.loop, turn.out, item))
        deliver_to_loops(on_loops)

    def _fail_running(self, error: Exception) -> None:
        """Abort every admitted or waiting turn and hand ``error`` to its stream."""
        turns = list(self.core.scheduler.running) + list(self.core.scheduler.waiting)
        for turn in turns:
            self.core.abort(turn)
        self._deliver_all([(turn, error) for turn in turns])

    # ---- health, warm-up, shutdown ----

    def check_health(self) -> None:
        """Raise EngineClosedError once a device fault has stopped the engine (Serve
        then replaces the replica; its sessions are rebuilt from the log)."""
        if self._error is not None or not self._thread.is_alive():
            raise EngineClosedError(f"engine stopped: {self._error or 'step thread exited'}")

    def checks_expect(self) -> bool:
        return True  # chat(..., expect=) (EngineCore.add_turn)

    def warm_up(self) -> None:
        """Compile the kernels before the first real turn (EngineCore.warm_up). On a
        CPU it runs on the step thread (see __init__)."""
        if self._on_cpu:
            self._on_step_thread(self.core.warm_up)
        else:
            with self._api():
                self.core.warm_up()

    def inject_device_fault(self, sticky: bool = False) -> None:
        """Test-only (engine/faults.py): the next step faults on the device."""
        from swiftinfer_core.engine import faults

        faults.fault_next_step(self, sticky)

    async def shutdown(self) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        if self._lock.acquire(timeout=5):  # nobody may wait forever on a closed engine
            try:
                self._apply_inbox()
                self._fail_running(EngineClosedError("the engine is shut down"))
            finally:
                self._lock.release()
        self.core.close()  # stops tensor-parallel workers; a step still running fails, it does not hang


def _poisons_device(exc: BaseException) -> bool:
    """A CUDA fault (illegal address, device-side assert) leaves the context unusable."""
    from swiftinfer_core.engine.faults import StickyDeviceFault

    accel = getattr(torch, "AcceleratorError", None)
    return (isinstance(exc, StickyDeviceFault) or (accel is not None and isinstance(exc, accel))
            or "CUDA error" in str(exc) or "device-side assert" in str(exc))
