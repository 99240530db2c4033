"""Shared fixtures for reward tests: a real reward server on loopback in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m flowdppo.rewards.server`` on 127.0.0.1; killed by ``stop``."""

    def __init__(self, port: int, *args: str, token: str | None = None) -> None:
        self.port, self.args, self.token = port, args, token
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("FLOWDPPO_REWARD_TOKEN", None)
        cmd = [sys.executable, "-m", "flowdppo.rewards.server", "--port", str(self.port)]
        cmd += ["--log-level", "warning", *self.args]
        if self.token:
            cmd += ["--token", self.token]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> ServerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"reward server exited early:\n{out}")
            req = urllib.request.Request(self.url + "/health")
            if self.token:
                req.add_header("Authorization", f"Bearer {self.token}")
            try:
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if json.loads(resp.read())["status"] == "ok":
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"reward server on port {self.port} not ready after {timeout_s}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def start_server():
    """Factory fixture: ``start_server(*args, token=...)``; every server is killed at teardown."""
    servers: list[ServerProcess] = []

    def start(*args: str, token: str | None = None, port: int | None = None) -> ServerProcess:
        server = ServerProcess(port or free_port(), *args, token=token).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
