"""SwiftInfer Serve: the Ray Serve layer over ``swiftinfer_core`` engines.

HTTP -> ``Ingress`` (OpenAI API) -> ``SessionAffinityRouter`` -> ``LLMReplica`` (one engine)
                                   \\____________ ``SessionDirectory`` (named actor) ____/

- ``app.py``            ``build_app(args)``: deployments, resources, router, scaling.
- ``config.py``         ``AppConfig``: every user-facing setting, validated.
- ``ingress.py``        FastAPI routes: chat completions, sessions, models, health, metrics.
- ``openai_schema.py``  request model (strict types, OpenAI's handling of extra fields).
- ``completion.py``     response bodies and the SSE stream of one turn.
- ``history.py``        conversation digests for clients that resend the history.
- ``router.py``         session-affinity request router (owner from the directory).
- ``directory.py``      session owners, records to rebuild caches, history index.
- ``replica.py``        the LLM replica: turns, record commits, drain on scale-down.
- ``engine_factory.py`` engine implementation per backend enum.
- ``autoscaling.py``    policy on requests, active sessions and KV pool use.
- ``metrics.py``        Prometheus registry of the ingress.
- ``errors.py``         exception class -> HTTP status and OpenAI error body.
- ``api_keys.py``       the hashed key file and the key ring an ingress reloads.
- ``auth.py``           Bearer key check in front of /v1 (ASGI middleware).
- ``tenants.py``        tenant-scoped session ids and history seeds.
- ``tenant_limits.py``  per-tenant concurrency and token buckets (429).
- ``exposure.py``       no keyless service on a network address.
"""
