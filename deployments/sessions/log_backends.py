"""The session log of a configured ``LogBackend``.

Each backend maps to a small function that imports its class where it is
called, so a directory on SQLite never imports the Redis client and neither
implementation module imports this one (they import session_log.py, the
protocol and record types).
"""

from __future__ import annotations

from typing import Callable

from deployments.config import LogBackend, SessionLogConfig
from deployments.sessions.session_log import SessionLog


def sqlite_log(config: SessionLogConfig, namespace: str) -> SessionLog:
    from deployments.sessions.log_sqlite import SqliteSessionLog

    return SqliteSessionLog(config, namespace)


def redis_log(config: SessionLogConfig, namespace: str) -> SessionLog:
    from deployments.sessions.log_redis import RedisSessionLog

    return RedisSessionLog(config, namespace)


# backend -> (config, namespace) -> log
LOG_IMPLEMENTATIONS: dict[LogBackend, Callable[[SessionLogConfig, str], SessionLog]] = {
    LogBackend.SQLITE: sqlite_log,
    LogBackend.REDIS: redis_log,
}


def open_log(config: SessionLogConfig, namespace: str) -> SessionLog:
    """The log of ``config.backend``; ``namespace`` (the directory's name) keeps
    applications sharing a file or a Redis server apart."""
    log = LOG_IMPLEMENTATIONS[config.backend](config, namespace)
    if not isinstance(log, SessionLog):
        raise TypeError(f"{type(log).__name__} does not implement SessionLog")
    return log
