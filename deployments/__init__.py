"""SwiftInfer Serve: the Ray Serve layer over ``swiftinfer_core`` engines.

HTTP -> ``Ingress`` (OpenAI API) -> ``SessionAffinityRouter`` -> ``LLMReplica`` (one engine)
                                   \\____________ ``SessionDirectory`` (named actor) ____/

Shared by every role:
- ``config.py``    ``AppConfig``: every user-facing setting, validated.
- ``messages.py``  what crosses a Ray boundary: turn grants, commits, session
                   descriptions, ``TurnStart``, replica stats (dataclasses).

By role (a role imports ``config``/``messages`` and the roles below it only:
app -> http, replica -> sessions):
- ``app/``       ``builder.build_app(args)`` (deployments, resources, router,
                 scaling), ``autoscaling`` (session-aware policy), ``exposure``
                 (no keyless service on a network address).
- ``http/``      the ingress: FastAPI routes (``ingress``), OpenAI request schemas
                 and responses, SSE, errors -> HTTP, API keys and tenant limits,
                 tokenizer routes, the playground, Prometheus metrics.
- ``replica/``   ``LLMReplica`` (turns, commits, drain), the engine factory, the
                 local copies of sessions, stream pacing, per-phase turn timing.
- ``sessions/``  the session directory (owners, leases, records), the
                 session-affinity router, the session log (SQLite or Redis) and
                 its batch writer, history digests, tenant-scoped ids.
"""
