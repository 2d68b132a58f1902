"""Tenant namespaces: the same client session id under two tenants is two conversations.

Every key belongs to a tenant. Below the ingress a session is known only by its
*scoped* id, ``<tenant>:<client id>``: the router, the replicas, the directory,
the session log and the idempotency keys (kept per session) all see that id, so
no lookup anywhere can reach another tenant's conversation. A request for
another tenant's id is a request for an id that does not exist in its own
namespace: the same code path, status, body and timing as any unknown id.

Shapes and why they cannot collide:
- tenant: ``[A-Za-z0-9_-]{1,32}`` (no ``:``), client id: ``[A-Za-z0-9_.:-]{1,128}``.
  The scoped id splits at its first ``:`` into exactly one (tenant, client id),
  so two different pairs never give one scoped id.
- No tenant (auth off, the single default tenant): the scoped id is the client
  id itself, unchanged from before tenants existed. A service runs either with
  keys (every id scoped) or without (none), so the two forms never meet in one
  running service. The engine accepts ids up to 256 characters (scoped ones
  are at most 32 + 1 + 128 = 161).
- History digests (id-less clients) start from a per-tenant seed instead of the
  empty string, so the same history under two tenants has two digests, and
  the ``conv-<opening>`` ids they reserve are scoped like any other id.
"""

from __future__ import annotations

import hashlib
import re

from swiftinfer_core.errors import InvalidRequestError

TENANT_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
SEPARATOR = ":"
_TENANT = re.compile(TENANT_PATTERN)


class TenantRequiredError(InvalidRequestError):
    """A handle call without a tenant on a service with API keys (400)."""


def check_tenant(tenant: str | None, keyed: bool) -> str | None:
    """``tenant`` if valid for this service: required (and well formed) when the
    service has keys; may be None (the default tenant) only without keys."""
    if tenant is None:
        if keyed:
            raise TenantRequiredError("this service has API keys: handle calls must pass tenant=")
        return None
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise TenantRequiredError("a tenant is 1-32 characters of [A-Za-z0-9_-]")
    return tenant


def scoped(tenant: str | None, client_id: str) -> str:
    """The id every layer below the ingress uses for ``client_id`` of ``tenant``."""
    return client_id if tenant is None else f"{tenant}{SEPARATOR}{client_id}"


def client_id(tenant: str | None, scoped_id: str) -> str:
    """Inverse of ``scoped`` for ids of ``tenant``: what its clients see."""
    if tenant is None:
        return scoped_id
    prefix = tenant + SEPARATOR
    if not scoped_id.startswith(prefix):
        raise ValueError(f"session id {scoped_id!r} is not in tenant {tenant!r}'s namespace")
    return scoped_id[len(prefix) :]


def history_seed(tenant: str | None) -> str:
    """Digest ``d_0`` of an empty history for ``tenant`` (history.py chains from it).
    The default tenant keeps the unsalted seed, so digests stored before tenants
    existed still match."""
    if tenant is None:
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256(f"swiftinfer-tenant{SEPARATOR}{tenant}".encode()).hexdigest()
