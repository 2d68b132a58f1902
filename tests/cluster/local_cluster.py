"""A multi-node Ray cluster on one machine, for tests: one ``ray start --head
--block`` process plus one ``ray start --address ... --block`` per worker node,
each node with its own ports and custom resources.

Tear-down never uses ``ray stop``: that kills every Ray process of the user on
the machine, including other people's clusters on a shared box. Instead each
node's ``ray start --block`` launcher (started in its own session) gets SIGINT,
so it shuts its own node down; then anything still running whose command line
names this cluster's private temp dir (a fresh ``mkdtemp``) is killed by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    def __init__(self, temp_dir: Path, log_dir: Path):
        self.temp_dir = temp_dir  # short path: Ray's unix sockets live under it
        self.log_dir = log_dir
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",  # as in production (Ray 2.60's default), with a token of our own
            "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex,
            "RAY_DEDUP_LOGS": "0",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.launchers: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _node_ports(self) -> list[str]:
        """Every port a node binds, chosen free, so nodes on one machine never collide."""
        return [
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        ]

    def _launch(self, name: str, args: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "w")
        cmd = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", "--log-style=record", *args, *self._node_ports()]
        self.launchers.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def start_head(self, num_cpus: int) -> None:
        self._launch("head", [
            "--head", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}", f"--num-cpus={num_cpus}", "--num-gpus=0",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}", f"--temp-dir={self.temp_dir}",
        ])

    def add_worker(self, name: str, num_cpus: int, resources: dict[str, float]) -> subprocess.Popen:
        self._launch(f"{name}-{len(self.launchers)}", [
            f"--address={self.address}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--num-gpus=0",
            f"--resources={json.dumps(resources)}", f"--temp-dir={self.temp_dir}",
        ])
        return self.launchers[-1]

    def run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """A Ray/Serve CLI command against this cluster (same env, token included)."""
        exe = str(BIN / cmd[0])
        return subprocess.run([exe, *cmd[1:]], env=self.env, capture_output=True, text=True, timeout=timeout)

    def alive_launchers(self) -> int:
        return sum(p.poll() is None for p in self.launchers)

    def stop(self, timeout_s: float = 30) -> list[int]:
        """Stop this cluster's nodes; returns the pids that had to be killed by hand."""
        for p in reversed(self.launchers):  # workers first, head last
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        deadline = time.time() + timeout_s
        for p in self.launchers:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        return self._kill_leftovers()

    def _kill_leftovers(self) -> list[int]:
        marker = str(self.temp_dir).encode()
        killed = []
        for _ in range(20):
            pids = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _cmdline_has(d, marker)]
            pids = [pid for pid in pids if pid != os.getpid()]
            if not pids:
                return killed
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        return killed


def _cmdline_has(proc_dir: Path, marker: bytes) -> bool:
    try:
        return marker in (proc_dir / "cmdline").read_bytes()
    except OSError:
        return False
