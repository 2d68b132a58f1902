"""User-facing configuration of the Serve application (``build_app`` args).

Everything a deployer can set lives here, validated with bounds; the engine's
own knobs are the core ``EngineConfig`` nested as ``engine``. ``serve_config.yaml``
passes a dict of these fields as the application's ``args``.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from swiftinfer_core.config import EngineConfig


class ConfigModel(BaseModel):
    """A section of the deployer's config: unknown keys refused, frozen. Unlike
    swiftinfer_core.config.StrictModel (engine and sampling settings, also built
    from requests, whose errors are InvalidRequestError: HTTP 400), errors stay
    pydantic's ValidationError, so ``app.builder.parse_config`` reports every bad
    field of the whole file at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineBackend(str, Enum):
    """Which implementation of ``EngineProtocol`` a replica runs."""

    NATIVE = "native"  # swiftinfer_core.Engine (CPU or CUDA)
    TRTLLM = "trtllm"  # TensorRT-LLM adapter (GPU only)


class RouterKind(str, Enum):
    """How the ingress picks an LLM replica for a request."""

    SESSION_AFFINITY = "session_affinity"  # ours: owner from the session directory, capacity-aware placement
    CONSISTENT_HASH = "consistent_hash"  # Ray's experimental ConsistentHashRouter (baseline)
    POWER_OF_TWO = "power_of_two"  # Serve's default router (baseline)


class ReplicaTransport(str, Enum):
    """How the ingress's calls to LLM replicas (turn streams, session reads) travel."""

    GRPC = "grpc"  # Serve's by-value gRPC transport: one gRPC message per streamed chunk
    RAY = "ray"  # Ray actor tasks and object refs (Serve's default): one Ray object report per streamed chunk


class HttpFront(str, Enum):
    """Who serves the HTTP API (deployments/app/direct.py)."""

    INGRESS = "ingress"  # ingress replicas; each streamed chunk crosses one more process (replica -> ingress)
    DIRECT = "direct"  # each LLM replica serves HTTP itself; HAProxy asks a route picker which one (needs HAProxy)


class LogBackend(str, Enum):
    """Where the session log lives (deployments/sessions/log_backends.py maps each to its class)."""

    SQLITE = "sqlite"  # one file on the directory actor's machine (single-node default)
    REDIS = "redis"  # a Redis server every node reaches (clusters)


class SqliteSync(str, Enum):
    """SQLite ``PRAGMA synchronous``: FULL survives power loss, NORMAL only process crashes."""

    FULL = "FULL"
    NORMAL = "NORMAL"


class SessionLogConfig(ConfigModel):
    """The durable log of sessions and turns the directory writes through."""

    backend: LogBackend = Field(LogBackend.SQLITE, description="Log implementation.")
    path: str | None = Field(None, min_length=1, max_length=4096, description="SQLite file. Default: ~/.local/share/swiftinfer/<directory_name>.sqlite3 on the directory's node.")
    sqlite_synchronous: SqliteSync = Field(SqliteSync.FULL, description="SQLite durability level of each batch commit.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", pattern=r"^rediss?://", max_length=4096, description="Redis server (persistence is Redis' own: use appendonly yes).")
    redis_username: str | None = Field(None, min_length=1, max_length=256, description="Redis ACL user (default: Redis' `default` user).")
    redis_password_file: str | None = Field(None, min_length=1, max_length=4096, description="File holding the Redis password (first line), on the directory's node: a mounted Secret, never the password itself in this config or the URL.")
    redis_tls_ca_file: str | None = Field(None, min_length=1, max_length=4096, description="CA bundle that signed the Redis server's certificate (`rediss://` URLs; default: the system's).")
    redis_tls_cert_file: str | None = Field(None, min_length=1, max_length=4096, description="Client certificate for Redis servers that require one (`tls-auth-clients yes`).")
    redis_tls_key_file: str | None = Field(None, min_length=1, max_length=4096, description="Private key of `redis_tls_cert_file`.")
    redis_tls_verify: bool = Field(True, description="Check the Redis server's certificate and host name. false: encryption without authentication of the server (tests only).")
    max_batch: int = Field(512, ge=1, le=1 << 16, description="Most log operations written in one transaction.")

    @model_validator(mode="after")
    def _redis_secrets(self) -> "SessionLogConfig":
        from urllib.parse import urlsplit

        if urlsplit(self.redis_url).password:
            raise ValueError("redis_url carries a password: put it in a file and set redis_password_file instead")
        tls = (self.redis_tls_ca_file, self.redis_tls_cert_file, self.redis_tls_key_file)
        if any(tls) and not self.redis_url.startswith("rediss://"):
            raise ValueError("redis_tls_* options need a rediss:// URL")
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError("redis_tls_cert_file and redis_tls_key_file go together")
        return self


class LimitsConfig(ConfigModel):
    """Per-request and per-replica limits against overload and hostile clients."""

    max_body_bytes: int = Field(4 << 20, ge=1024, le=1 << 30, description="Largest request body; larger is 413 before it is buffered.")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="Time to receive a request body; a slower client gets 408 (slow-loris).")
    request_timeout_s: float = Field(600.0, gt=0, le=86400, description="Longest turn, queueing included; then 504 (or an in-band error once streaming) and the turn is rolled back.")
    unavailable_retry_s: float = Field(90.0, ge=0, le=3600, description="A turn whose replica's engine is gone before its first token (device fault, replica died) is retried this long, so it waits for a healthy or replacement replica instead of failing; 0: answer 503 at once.")
    max_output_tokens: int = Field(16384, ge=1, le=1 << 20, description="Largest max_tokens a request may ask for (400 above).")
    max_sessions_per_replica: int = Field(4096, ge=1, le=1 << 20, description="Conversations a replica's engine keeps in memory; beyond, the least recently used idle ones are dropped (rebuilt from the log on their next turn).")
    idle_ttl_s: float | None = Field(900.0, gt=0, le=1 << 24, description="A conversation idle this long leaves the replica's memory (slot released; the next turn rebuilds). None: never.")


class TenantLimitsConfig(ConfigModel):
    """What one tenant (all its keys together) may use; past it, 429 with Retry-After.
    Counted per ingress replica (with N ingress replicas a tenant gets up to N times these)."""

    max_conversations: int | None = Field(None, ge=1, le=1 << 20, description="Turns of one tenant running at once (its concurrent conversations). None: no limit.")
    requests_per_s: float | None = Field(None, gt=0, le=1e6, description="Token-bucket refill of chat requests per second. None: no limit.")
    request_burst: int = Field(20, ge=1, le=1 << 20, description="Chat requests a tenant may send at once on a full bucket.")
    tokens_per_s: float | None = Field(None, gt=0, le=1e9, description="Token-bucket refill of generated tokens per second (a turn reserves its max_tokens, the unused part is refunded). None: no limit.")
    token_burst: int = Field(4096, ge=1, le=1 << 30, description="Generated tokens a tenant may spend at once on a full bucket; at least max_tokens of one turn.")


class AuthConfig(ConfigModel):
    """Who may call the API (README "Security"). Keys come from a file of hashed
    keys (``swiftinfer keys add``), never from this config."""

    keys_file: str | None = Field(None, min_length=1, max_length=4096, description="JSON file of hashed API keys on every ingress node. None: the path in the environment variable `keys_file_env`, if set; else no keys (auth off).")
    keys_file_env: str = Field("SWIFTINFER_KEYS_FILE", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", description="Environment variable holding the key file's path, read when the application is built.")
    reload_period_s: float = Field(1.0, ge=0.05, le=60, description="How often an ingress looks whether the key file changed (a revoked key is refused this soon).")
    metrics_require_key: bool = Field(False, description="GET /metrics needs a key too (it shows load and session counts, no conversation).")
    allow_unauthenticated: bool = Field(False, description="Start without keys although Serve's HTTP proxy listens on a non-loopback address (a loud warning is logged). Only behind a network that admits trusted clients alone.")
    tenant_limits: TenantLimitsConfig = Field(default_factory=TenantLimitsConfig, description="Per-tenant rate and concurrency limits (keyed tenants and the default tenant alike).")
    tenant_overrides: dict[str, TenantLimitsConfig] = Field(default_factory=dict, max_length=4096, description="Limits of named tenants instead of `tenant_limits` (e.g. a larger plan); a tenant not listed gets `tenant_limits`.")

    @property
    def keyed(self) -> bool:
        return self.keys_file is not None


class ScalingConfig(ConfigModel):
    """LLM replica count. ``min_replicas == max_replicas`` disables autoscaling."""

    min_replicas: int = Field(1, ge=0, le=512, description="Fewest LLM replicas.")
    max_replicas: int = Field(1, ge=1, le=512, description="Most LLM replicas.")
    initial_replicas: int | None = Field(None, ge=0, le=512, description="Replicas at deploy time (default: min_replicas).")
    target_ongoing_requests: float | None = Field(None, gt=0, le=4096, description="Turns in flight per replica that the request signal aims for. Default: target_kv_use x the replica's request limit (AppConfig.max_ongoing_requests, default its KV slots). A replica batches its turns in one engine, so Serve's generic 2-4 would ask for a replica per few conversations: under a closed loop it pinned a 7B ramp at max_replicas with 16 conversations left (bench/results/autoscale_7b.json, 2026-12-03).")
    target_active_sessions: float = Field(16.0, gt=0, le=1 << 16, description="Sessions with a turn inside `active_window_s` that one replica should hold.")
    target_kv_use: float = Field(0.8, gt=0, le=1.0, description="Share of KV slots in use per replica the autoscaler aims for.")
    active_window_s: float = Field(60.0, gt=0, le=86400, description="A session counts as active this long after its last turn.")
    upscale_delay_s: float = Field(10.0, ge=0, le=3600, description="Sustained demand needed before adding replicas.")
    downscale_delay_s: float = Field(120.0, ge=0, le=86400, description="Sustained slack needed before removing replicas.")
    look_back_period_s: float = Field(30.0, gt=0, le=3600, description="Window the autoscaler averages metrics over.")
    metrics_interval_s: float = Field(10.0, gt=0, le=600, description="How often replicas push session metrics to the autoscaler (Serve 2.60 still reads this deprecated field for custom metrics).")

    @model_validator(mode="after")
    def _bounds(self) -> "ScalingConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        if self.look_back_period_s <= self.metrics_interval_s:
            raise ValueError("look_back_period_s must exceed metrics_interval_s, or the window holds no sample")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("initial_replicas must lie within [min_replicas, max_replicas]")
        return self

    @property
    def fixed(self) -> bool:
        return self.min_replicas == self.max_replicas


class RebalanceConfig(ConfigModel):
    """Moving owned conversations, with their exact KV, from a replica above its fair
    share to the others (a replica the autoscaler added otherwise takes only new ones).
    Fair share: the sessions the live, non-draining replicas own (plus those on their
    way between them) split in proportion to their KV slots (deployments/sessions/rebalance.py)."""

    enabled: bool = Field(True, description="Replicas above their fair share hand sessions (between turns, with their KV left in the object store) back to the directory, so their next turn is placed by load and imports the KV exactly. false: owned sessions never move while their owner lives.")
    slack_sessions: int = Field(2, ge=0, le=1 << 20, description="A replica moves sessions only when it owns more than its fair share plus this many (and plus `slack_ratio` of the share): hysteresis against moves for a session or two.")
    slack_ratio: float = Field(0.1, ge=0, le=10, description="Slack as a share of the replica's fair share; the larger of the two slacks applies.")
    max_sessions_per_period: int = Field(4, ge=1, le=4096, description="Most sessions one replica hands over per eviction period (about 5 s); the KV bytes per period are bounded by `kv_transfer_max_mb`. Moves trickle instead of all at once.")
    hold_s: float = Field(300.0, gt=0, le=86400, description="How long the directory keeps a moved session's KV for its next turn; a session that takes no turn by then goes back to its old owner (which still holds its copy) and its KV leaves the object store.")


class AppConfig(ConfigModel):
    """The whole application: one ingress deployment in front of N LLM replicas."""

    model_id: str = Field("smollm2-135m-instruct", min_length=1, max_length=128, description="Name clients put in `model`; listed by GET /v1/models.")
    backend: EngineBackend = Field(EngineBackend.NATIVE, description="Engine implementation each replica runs.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="Engine settings (model path, sinks, window, slots, device, tp_size).")
    scaling: ScalingConfig = Field(default_factory=ScalingConfig, description="LLM replica count and autoscaling.")
    router: RouterKind = Field(RouterKind.SESSION_AFFINITY, description="Request router in front of the LLM replicas.")
    replica_transport: ReplicaTransport = Field(ReplicaTransport.GRPC, description="How the ingress's calls to LLM replicas travel. grpc: Serve's by-value gRPC transport (handle option _by_reference=False), which cut the ingress's and the LLM replica's CPU per streamed chunk by about 30% against ray (bench/results/serve_cpu_cost_r3.json). ray: Serve's default actor calls. The directory's calls (KV handed over as object refs) always use ray.")
    gpu_share: float = Field(1.0, gt=0, le=1, description="Share of one GPU each LLM replica takes (Ray num_gpus). Below 1 several replicas share a device (0.5: two per GPU, 0.33: three); each engine then sizes its KV pool from its share of the device's memory (EngineConfig.memory_share), so they never overcommit it. Single-GPU native replicas only.")
    replica_cpus: float = Field(1.0, ge=0, le=256, description="Logical CPUs one LLM replica reserves.")
    replica_resources: dict[str, float] = Field(default_factory=dict, description="Extra Ray resources one LLM replica needs, e.g. {'accelerator_type:H200': 0.001}.")
    cpu_threads: int = Field(1, ge=1, le=256, description="Torch threads of a CPU engine.")
    max_ongoing_requests: int | None = Field(None, ge=1, le=4096, description="Requests one LLM replica takes at once (the engine batches its turns); more wait at the router (past max_queued_requests: 429 queue_full). Default: the engine's KV slots (engine.max_sessions), else 256. Fewer leaves slots idle while turns wait; more lets the replica answer 429 no_capacity at once, and clients' retries then cost more than the queue (bench/results/serve_ongoing_cpu_*.json). Session reads count too: on a saturated replica they wait behind turns.")
    max_queued_requests: int = Field(256, ge=1, le=1 << 20, description="Turns waiting at a router per deployment before answering 429.")
    graceful_shutdown_timeout_s: float = Field(60.0, gt=0, le=3600, description="How long a stopping replica may finish turns and hand its sessions off.")
    routing_stats_period_s: float = Field(1.0, gt=0, le=60, description="How often replicas report KV capacity to routers (and that their engine stopped: routers then move its sessions).")
    health_check_period_s: float = Field(5.0, gt=0, le=600, description="Serve's health check of an LLM replica; three failures in a row (a stopped engine) replace it.")
    owner_grace_s: float = Field(3.0, ge=0, le=120, description="How long a router waits for a session's owner it has never seen (a replica still joining) before rebuilding elsewhere.")
    lease_warm_turns: bool = Field(False, description="Take the directory's lease on every turn. False (default): a turn of a conversation whose last turn this replica committed, and whose copy is still that turn's, starts without calling the directory (no lease; the commit's sequence check still keeps one turn per number), so a warm turn's start makes no remote call. A second turn of it sent to another replica meanwhile (only when routers disagree) then runs there too and fails at its commit (not recorded, retry) instead of getting 409 at its start. True: every turn leases first, as before.")
    owner_cache_s: float = Field(10.0, ge=0, le=3600, description="How long a router remembers a session's owner and sends its turns there without asking the directory (while that replica is alive and not draining). 0: ask the directory on every turn.")
    directory_name: str = Field("swiftinfer-sessions", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Named Ray actor holding session owners and records.")
    default_max_tokens: int = Field(256, ge=1, le=1 << 20, description="max_tokens when the request gives none.")
    ingress_replicas: int = Field(1, ge=1, le=64, description="Ingress (HTTP/OpenAI) replicas (http_front: ingress).")
    http_front: HttpFront = Field(HttpFront.INGRESS, description="ingress: ingress replicas serve HTTP and call the LLM replicas through Serve handles. direct: every LLM replica serves the HTTP API itself and HAProxy sends each request to the replica that a route picker names (the session's owner), so a turn's chunks leave the replica straight to HAProxy; needs RAY_SERVE_ENABLE_HA_PROXY=1 and RAY_SERVE_ENABLE_DIRECT_INGRESS=1 where Serve starts (`make serve FRONT=direct`).")
    route_pickers: int = Field(1, ge=1, le=64, description="Route picker replicas HAProxy asks which LLM replica takes a request (http_front: direct).")
    engine_process: bool = Field(True, description="Run the native engine's model steps in a child process of the replica (swiftinfer_core/engine/process.py). In the replica's own process the steps share one GIL with every stream's Ray work, which slowed steps 2.4x at 128 conversations on an H200 (bench/results/capacity_serve_7b_128.json). Ignored by other backends.")
    gil_switch_interval_ms: float = Field(5.0, gt=0, le=100, description="Python's thread switch interval in an LLM replica (Python's default: 5 ms). The engine's step thread and the replica's event loop (streams, Ray calls) share one GIL; a shorter interval hands the loop the GIL sooner while a step runs. Its effect on latency has not been measured in isolation.")
    stream_interval_ms: float = Field(50.0, ge=0, le=1000, description="Pacing of streamed chunks per turn: the first and last go at once, others are held and leave merged with the first token that arrives once this long has passed. 0: one chunk per token.")
    stream_max_chunks_per_s: float = Field(1000.0, ge=0, le=1_000_000, description="Streamed chunks per second one LLM replica sends, spread over its open streams: each waits max(stream_interval_ms, open streams / this) between chunks (deployments/replica/pacing.py). Every chunk is one message per hop (replica_transport); 0: no budget, stream_interval_ms alone.")
    stats_report_period_s: float = Field(2.0, gt=0, le=60, description="How often a replica pushes engine stats for /metrics and readiness.")
    session_log: SessionLogConfig = Field(default_factory=SessionLogConfig, description="Durable log of sessions and turns.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Request and replica limits.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys, tenants and exposure rules.")
    kv_transfer_max_mb: float = Field(1024.0, ge=0, le=1 << 24, description="KV bytes a draining replica may hand over through the object store (engines that match import it; others rebuild), and KV bytes a replica may hand over per eviction period when it rebalances. 0: always rebuild, and never rebalance.")
    rebalance: RebalanceConfig = Field(default_factory=RebalanceConfig, description="Moving owned conversations to replicas below their fair share (e.g. one the autoscaler just added).")

    @property
    def ongoing_limit(self) -> int:
        """Serve's max_ongoing_requests for an LLM replica (see the field)."""
        return self.max_ongoing_requests or self.engine.max_sessions or 256

    @property
    def request_target(self) -> float:
        """Ongoing turns per replica the autoscaler's request signal aims for (ScalingConfig.target_ongoing_requests)."""
        return self.scaling.target_ongoing_requests or self.scaling.target_kv_use * self.ongoing_limit

    @property
    def uses_gpu(self) -> bool:
        return self.engine.device.value == "cuda"

    @property
    def replica_engine(self) -> EngineConfig:
        """The engine config a replica runs: its memory share is the replica's GPU share."""
        return self.engine.model_copy(update={"memory_share": self.gpu_share}) if self.gpu_share < 1 else self.engine

    @model_validator(mode="after")
    def _gpu_share(self) -> "AppConfig":
        if self.gpu_share < 1:
            if self.engine.tp_size > 1:
                raise ValueError(f"gpu_share {self.gpu_share} < 1 needs tp_size 1: a tensor-parallel replica takes whole GPUs")
            if self.backend is not EngineBackend.NATIVE:
                raise ValueError(f"gpu_share {self.gpu_share} < 1 is for the native engine; {self.backend.value} sizes its own memory")
        return self
