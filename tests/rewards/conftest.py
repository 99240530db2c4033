"""Shared fixtures for reward tests: a real reward server on loopback in a subprocess, and tiny
random models saved in the formats the real weights use (to test the real loading paths)."""

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


@pytest.fixture(name="free_port")
def free_port_fixture():
    """A function returning a free TCP port on 127.0.0.1."""
    return free_port


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


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP saved like a hub repo (config, safetensors, tokenizer, processor)."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def _byte_unicode_chars() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level BPE uses for the 256 byte values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    extra = [b for b in range(256) if b not in printable]
    codes = {b: b for b in printable} | {b: 256 + i for i, b in enumerate(extra)}
    return [chr(codes[b]) for b in range(256)]


def write_clip_tokenizer(path: Path) -> int:
    """A byte-level CLIP BPE tokenizer with no merges (vocab.json, merges.txt); → vocab size."""
    chars = _byte_unicode_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return len(vocab)


def tiny_clip_config(vocab_size: int, image_size: int = 32, projection_dim: int = 16):
    from transformers import CLIPConfig

    text = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    vision = dict(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def save_tiny_clip(path: Path, seed: int = 0, image_size: int = 32) -> Path:
    """A random CLIPModel + tokenizer + CLIPImageProcessor in ``path`` (like a hub repo)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    vocab_size = write_clip_tokenizer(path)
    torch.manual_seed(seed)
    CLIPModel(tiny_clip_config(vocab_size, image_size)).save_pretrained(path)
    crop = {"height": image_size, "width": image_size}
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=crop).save_pretrained(path)
    return path
