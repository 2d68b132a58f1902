"""Safe defaults at start-up: no keyless service on a network address.

``build_app`` resolves the key file (config, else the environment variable
``auth.keys_file_env``) and asks Serve's controller which address its HTTP
proxy listens on. On a non-loopback address (``0.0.0.0``, ``::``, a LAN IP, a
host name that resolves to one) with no key file the application refuses to
build, unless ``auth.allow_unauthenticated: true``, which logs a loud warning.
Loopback (``127.0.0.0/8``, ``::1``, ``localhost``) needs no keys: only local
processes reach it, as with ``make serve``'s default.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

from deployments.config import AppConfig

log = logging.getLogger("ray.serve")


class ExposureError(ValueError):
    """The service would listen on a network address without API keys."""


def is_loopback(host: str) -> bool:
    """True when every address ``host`` stands for is a loopback one."""
    host = (host or "").strip().strip("[]")
    if not host:
        return False  # an empty host binds every interface
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def serve_http_host() -> str:
    """The host Serve's HTTP proxy binds: the running controller's, else what
    ``serve.start`` would use by default."""
    from ray.serve.config import HTTPOptions

    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
    except Exception:  # no Ray connection: serve.run will start Serve with the defaults
        client = None
    return client.http_config.host if client is not None else HTTPOptions().host


def resolve_keys_file(cfg: AppConfig) -> AppConfig:
    """``auth.keys_file`` from the environment when the config leaves it out, so
    every replica gets the same path in its config."""
    auth = cfg.auth
    if auth.keys_file is not None or not os.environ.get(auth.keys_file_env):
        return cfg
    return cfg.model_copy(update={"auth": auth.model_copy(update={"keys_file": os.environ[auth.keys_file_env]})})


def check_exposure(cfg: AppConfig, host: str) -> None:
    """Raise ``ExposureError`` for a keyless service on a network address, unless allowed."""
    if cfg.auth.keyed or is_loopback(host):
        return
    if not cfg.auth.allow_unauthenticated:
        raise ExposureError(
            f"refusing to start: Serve's HTTP proxy listens on {host!r}, a network address, and no API keys are "
            f"configured. Create keys (swiftinfer keys add NAME --file PATH) and set auth.keys_file or "
            f"${cfg.auth.keys_file_env}; or bind 127.0.0.1; or set auth.allow_unauthenticated: true."
        )
    log.warning(
        "!!! SECURITY WARNING: SwiftInfer Serve listens on %r WITHOUT API KEYS (auth.allow_unauthenticated: true). "
        "Anyone who reaches this address can chat, read and delete every conversation. !!!", host,
    )
