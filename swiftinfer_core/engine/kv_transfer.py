"""Moving a conversation between engines: its record (``export_session`` /
``import_session``: the next engine rebuilds the cache from the token ids), or its
exact KV (``export_kv`` / ``import_kv``: the rows in use of its cache slot, taken
only by an engine whose caches are interchangeable, ``kv_fingerprint``).

Part of ``EngineCore`` (core.py), as a base class: the same object and state
(``sessions``, ``pool``, ``slots``, ``layout``, ``cfg``, ``kv_fingerprint``, and
``session`` / ``close_session``).
"""

from __future__ import annotations

import logging

from swiftinfer_core.config import EngineConfig
from swiftinfer_core.engine.engine_model import EngineModel
from swiftinfer_core.engine.session import Session
from swiftinfer_core.protocol import KVSnapshot, SessionRecord

log = logging.getLogger(__name__)


def kv_fingerprint(cfg: EngineConfig, m: EngineModel) -> str:
    k0 = m.pool.k[0]
    # Caches are interchangeable between engines with the same weights, dtype, cache storage
    # (k0.dtype: float8_e4m3fn for kv_cache_dtype 'fp8') and layout; quant_smoothing scales the
    # cached values (model/smooth.py), so it is part of the weights here.
    smooth = "" if cfg.quant_smoothing is None else f"|smooth {cfg.quant_smoothing}"
    return (f"{cfg.model}|{cfg.load_format.value}:{cfg.seed}{smooth}|{m.args!r}|{k0.dtype}|{len(m.pool.k)}x{tuple(k0.shape[1:])}"
            f"|{m.layout}")


class SessionTransfer:
    def export_session(self, session_id: str) -> SessionRecord:
        return self.session(session_id).record()

    def import_session(self, record: SessionRecord) -> None:
        if record.session_id in self.sessions:
            self.close_session(record.session_id)
        self.sessions[record.session_id] = Session.from_record(record, self.layout)

    def export_kv(self, session_id: str) -> KVSnapshot | None:
        """The rows in use of an idle resident session's slot (single-rank engines only)."""
        s = self.session(session_id)
        if s.slot is None or s.turn is not None or self.cfg.tp_size > 1:
            return None
        k, v = self.pool.export_slot(s.slot, rows=self.layout.fill(s.n))
        return KVSnapshot(self.kv_fingerprint, s.record(), s.n, k, v)

    def import_kv(self, snap: KVSnapshot) -> bool:
        """Install a snapshot from a matching engine as the session's cache (False:
        the caller rebuilds the conversation from its record instead)."""
        rec = snap.record
        rows = self.layout.fill(snap.n)
        if snap.k.dtype != self.pool.k[0].dtype:  # never re-quantised or widened: the other engine's numbers differ
            log.info("session %s: KV snapshot stored in %s, this engine's cache in %s (kv_cache_dtype): rebuilding it",
                     rec.session_id, snap.k.dtype, self.pool.k[0].dtype)
            return False
        if snap.fingerprint != self.kv_fingerprint or self.cfg.tp_size > 1:
            return False
        if len(rec.sink_ids) + len(rec.window_ids) != rows or tuple(snap.k.shape[2:3]) != (rows,):
            return False
        old = self.sessions.get(rec.session_id)
        if old is not None and old.turn is not None:
            return False
        if old is not None:
            self.close_session(rec.session_id)
        slot = self.slots.take(rec.session_id)
        if slot is None:
            return False
        self.pool.import_slot(slot, snap.k, snap.v)
        self.sessions[rec.session_id] = Session.from_snapshot(rec, snap.n, slot, self.layout)
        return True
