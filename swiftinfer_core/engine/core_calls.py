"""The engine's calls into the core from a caller's thread.

Each waits for the step in progress, then runs between two steps under the
step lock (``_api``: callers queued behind a step go before the next one);
``_on_step_thread`` runs one on the step thread instead, as an inbox command.
The session and stats calls of ``EngineProtocol`` are made the first way.

Part of ``Engine`` (engine.py), as a base class: the same object and state
(``core``, ``_lock``, ``_gate``, ``_callers``, and the inbox: ``_post``,
``_apply_inbox``).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable

from swiftinfer_core.protocol import EngineStats, KVSnapshot, SessionRecord, SessionStats, SessionView


class CoreCalls:
    @contextmanager
    def _api(self):
        """The core, between two steps. With a plain lock the step thread takes
        it back right after each step (it does not sleep in between), so a caller
        could wait several steps; here the step thread lets queued callers in
        first, and a call waits for at most the step in progress."""
        with self._gate:
            self._callers += 1
        try:
            self._lock.acquire()
        finally:
            with self._gate:
                self._callers -= 1
                if not self._callers:
                    self._gate.notify_all()
        try:
            self._apply_inbox()
            yield
        finally:
            self._lock.release()

    def _on_step_thread(self, fn: Callable[[], object]) -> object:
        """fn() as an inbox command (run between steps, normally by the step thread),
        waited for; its result returned, its exception raised here."""
        done, box = threading.Event(), []

        def run() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:
                box.append((False, exc))
            finally:
                done.set()

        self._post(run)
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    # ---- sessions and stats ----

    def session_stats(self, session_id: str) -> SessionStats:
        with self._api():
            return self.core.session_stats(session_id)

    def has_session(self, session_id: str) -> bool:
        with self._api():
            return self.core.has_session(session_id)

    def close_session(self, session_id: str) -> None:
        with self._api():
            self.core.close_session(session_id)

    def session_ids(self) -> list[str]:
        with self._api():
            return self.core.session_ids()

    def slotless_ids(self) -> list[str]:
        with self._api():
            return self.core.slotless_ids()

    def export_session(self, session_id: str) -> SessionRecord:
        with self._api():
            return self.core.export_session(session_id)

    def import_session(self, record: SessionRecord) -> None:
        with self._api():
            self.core.import_session(record)

    def export_kv(self, session_id: str) -> KVSnapshot | None:
        with self._api():
            return self.core.export_kv(session_id)

    def import_kv(self, snapshot: KVSnapshot) -> bool:
        with self._api():
            return self.core.import_kv(snapshot)

    def stats(self) -> EngineStats:
        """Exact (taken between steps): admission decisions are made from it."""
        with self._api():
            return self.core.stats()

    def view(self, session_id: str) -> SessionView:
        with self._api():
            return self.core.view(session_id)
