"""deployments/http/errors.py: exceptions -> OpenAI error JSON, status and Retry-After,
for the classes whose retry hint comes from the exception itself (no cluster needed)."""

from __future__ import annotations

import json

from ray.serve.exceptions import BackPressureError

from deployments.http.errors import TenantLimitError, error_response
from swiftinfer_core.errors import CapacityError, InvalidRequestError


def _parts(exc: BaseException) -> tuple[int, dict, str | None]:
    resp = error_response(exc, {"x-request-id": "r1"})
    assert resp.headers["x-request-id"] == "r1"
    return resp.status_code, json.loads(resp.body)["error"], resp.headers.get("retry-after")


def test_a_full_router_queue_is_429_queue_full_with_retry_after():
    # Serve's BackPressureError carries retry_after_s=None: the table's 1 s stands
    status, err, retry = _parts(BackPressureError(num_queued_requests=4, max_queued_requests=4))
    assert (status, err["code"], err["type"], retry) == (429, "queue_full", "rate_limit_error", "1")
    assert "max_queued_requests=4" in err["message"]
    status, err, retry = _parts(BackPressureError(4, 4, retry_after_s=2.5))
    assert (status, retry) == (429, "3")


def test_retry_after_takes_the_later_of_the_table_and_the_exception():
    assert _parts(TenantLimitError("slow down", retry_after_s=3.2))[::2] == (429, "4")
    assert _parts(TenantLimitError("slow down", retry_after_s=0.1))[::2] == (429, "1")
    assert _parts(CapacityError("no slot"))[::2] == (429, "1")
    status, err, retry = _parts(InvalidRequestError("bad temperature"))
    assert (status, err["code"], retry) == (400, None, None)
