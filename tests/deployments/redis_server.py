"""A real redis-server for tests: installed with apt when missing (CI runs as
root on a clean Debian machine), on loopback at a random port, AOF on."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from serve_helpers import free_port


def ensure_installed() -> None:
    if shutil.which("redis-server") is not None:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], env=env, check=True, capture_output=True)


@dataclass
class RedisServer:
    url: str
    port: int
    data: Path
    proc: subprocess.Popen

    @classmethod
    def start(cls, data: Path, port: int | None = None) -> "RedisServer":
        import redis

        ensure_installed()
        port = port or free_port()
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.time() + 20
        while True:
            try:
                redis.Redis.from_url(url).ping()
                return cls(url, port, data, proc)
            except redis.ConnectionError:
                if time.time() > deadline or proc.poll() is not None:
                    proc.kill()
                    raise RuntimeError(f"redis-server did not start (exit code {proc.poll()})") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()  # SIGTERM: redis flushes its AOF before exiting
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
