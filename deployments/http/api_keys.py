"""API keys: a file of hashed keys, and the key ring an ingress checks requests against.

The file (JSON, mode 0600, replaced atomically on every change) holds no key,
only its SHA-256:

    {"version": 1, "keys": [
        {"name": "alice", "tenant": "acme", "sha256": "<64 hex>", "created": 1767225600.0, "revoked": null}
    ]}

A key is ``sk-si-`` + 32 random bytes (urlsafe base64): with that much entropy a
plain SHA-256 is as good as a slow password hash, and checking one costs
microseconds. ``swiftinfer keys add NAME`` prints a new key once; ``revoke``
marks it revoked (kept for the audit: ``keys list`` shows when).

``KeyRing`` re-reads the file when its identity (inode, mtime, size) changes,
looked at most every ``reload_period_s``, so a revocation reaches every running
ingress within about a second, with no restart. A file that becomes unreadable
or malformed admits no key until it is fixed (fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from deployments.sessions.tenants import TENANT_PATTERN

log = logging.getLogger("ray.serve")

KEY_PREFIX = "sk-si-"
MAX_KEY_CHARS = 256  # longer bearer tokens are refused before hashing
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TENANT = re.compile(TENANT_PATTERN)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class KeyFileError(Exception):
    """The key file is missing, unreadable or malformed, or a change to it is refused."""


@dataclass(frozen=True)
class ApiKey:
    """One entry of the key file (no secret in it)."""

    name: str
    tenant: str
    sha256: str
    created: float
    revoked: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def read_keys(path: str | Path) -> list[ApiKey]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyFileError(f"no key file at {path} (create one with: swiftinfer keys add NAME --file {path})") from None
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("keys"), list):
        raise KeyFileError(f"{path} is not a version 1 key file")
    keys = []
    for i, raw in enumerate(data["keys"]):
        try:
            key = ApiKey(**raw)
        except TypeError as exc:
            raise KeyFileError(f"{path}: keys[{i}]: {exc}") from None
        if not (_NAME.match(str(key.name)) and _TENANT.match(str(key.tenant)) and _HEX64.match(str(key.sha256))):
            raise KeyFileError(f"{path}: keys[{i}] has a bad name, tenant or sha256")
        keys.append(key)
    return keys


def write_keys(path: str | Path, keys: list[ApiKey]) -> None:
    """Atomically replace ``path`` (a new inode: readers see the old or the new file, whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "keys": [asdict(k) for k in keys]}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_key(path: str | Path, name: str, tenant: str | None = None) -> str:
    """Create key ``name`` (tenant: ``name`` unless given) and return the key; only its hash is stored."""
    tenant = tenant or name
    if not _NAME.match(name):
        raise KeyFileError("a key name is 1-64 characters of [A-Za-z0-9_.-]")
    if not _TENANT.match(tenant):
        raise KeyFileError("a tenant is 1-32 characters of [A-Za-z0-9_-]")
    keys = read_keys(path) if Path(path).exists() else []
    if any(k.name == name and k.active for k in keys):
        raise KeyFileError(f"an active key named {name!r} exists already (revoke it, or pick another name)")
    key = new_key()
    write_keys(path, keys + [ApiKey(name, tenant, hash_key(key), time.time())])
    return key


def revoke_key(path: str | Path, name: str) -> ApiKey:
    keys = read_keys(path)
    for i, k in enumerate(keys):
        if k.name == name and k.active:
            keys[i] = ApiKey(k.name, k.tenant, k.sha256, k.created, time.time())
            write_keys(path, keys)
            return keys[i]
    raise KeyFileError(f"no active key named {name!r} in {path}")


class KeyRing:
    """The active keys of one file, as an ingress checks them.

    ``tenant_of(token)`` hashes the presented token and compares it with every
    active hash (``hmac.compare_digest``, no early exit), so the time taken does
    not depend on which key, if any, matched."""

    def __init__(self, path: str | Path, reload_period_s: float = 1.0):
        self.path = Path(path)
        self._period = reload_period_s
        self._lock = threading.Lock()
        self._active: list[tuple[str, str]] = []  # (sha256, tenant) of unrevoked keys
        self._identity: tuple | None = None
        self._checked = 0.0
        self._load(os.stat(self.path))  # missing or malformed at start: raise, the service does not start

    def _load(self, st: os.stat_result) -> None:
        keys = read_keys(self.path)
        self._active = [(k.sha256, k.tenant) for k in keys if k.active]
        self._identity = (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self._period:
            return
        with self._lock:
            if now - self._checked < self._period:
                return
            self._checked = now
            try:
                st = os.stat(self.path)
                if (st.st_ino, st.st_mtime_ns, st.st_size) != self._identity:
                    self._load(st)
                    log.info("API keys reloaded from %s: %d active", self.path, len(self._active))
            except (OSError, KeyFileError) as exc:
                if self._active or self._identity is not None:
                    log.error("API key file unusable, refusing every key until it is fixed: %s", exc)
                self._active, self._identity = [], None

    def tenant_of(self, token: str) -> str | None:
        """The tenant of an active key equal to ``token``, else None."""
        self._refresh()
        digest = hash_key(token)
        found = None
        for sha, tenant in self._active:
            if hmac.compare_digest(sha, digest) and found is None:
                found = tenant
        return found

    def __len__(self) -> int:
        self._refresh()
        return len(self._active)
