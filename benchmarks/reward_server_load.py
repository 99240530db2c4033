"""Load test of the reward server: N concurrent clients × M requests, good and bad, on loopback.

Starts ``python -m flowdppo.rewards.server --reward jpeg_compressibility`` on 127.0.0.1 (a free
port), sends each client's requests in turn (a fixed mix of the kinds in ``KINDS``; a 503 is
retried after its ``Retry-After``, at most ``--retries`` times), samples the server's RSS every
20 ms and times ``GET /health`` every 0.25 s meanwhile, then reports: good requests answered
with the right scores, bad requests answered 4xx (and which), 503s, the server's RSS before /
peak / after, the slowest ``/health``, and whether the server is alive at the end. Everything is
bounded: ``--max-seconds`` for the whole load, a timeout on every request, the server killed at
the end. Exit 0 when every good request was scored right, every bad one got 4xx and the server
is alive; else 1.

Run: ``.venv/bin/python benchmarks/reward_server_load.py [--clients 16] [--requests 25]
[--workers 2] [--queue 4] [--json OUT]``. With ``--largest`` every request is the largest the
server admits by default (16 images of 1024², ``--max-request-pixels``): the memory bound.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flowdppo.rewards.base import build_reward  # noqa: E402
from flowdppo.rewards.protocol import decode_images, encode_images  # noqa: E402

MAX_BYTES = 16 << 20  # the server's --max-bytes here, so that an oversized body is cheap to send
MAX_IMAGES = 64  # the server's --max-images here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _score_body(images: list[str]) -> dict[str, Any]:
    return {"version": 1, "images": images, "prompts": ["p"] * len(images)}


def _compressible_png(side: int) -> str:
    """A black ``side``² PNG: a few kB that decode to side² · 3 bytes (and 12× that as float)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _smooth_pngs(n: int, side: int, g: torch.Generator) -> list[str]:
    """``n`` smooth random ``side``² images (upsampled 16² noise): ~0.8 MB of PNG per Mpx."""
    coarse = torch.rand(n, 3, 16, 16, generator=g)
    return encode_images(torch.nn.functional.interpolate(coarse, size=side, mode="bilinear"))


def _good(name: str, images: list[str]) -> dict[str, tuple[bytes, list[float]]]:
    decoded = decode_images(images)  # what the server sees: the 8-bit PNG pixels
    reward = build_reward("jpeg_compressibility")
    expected = reward(decoded, ["p"] * len(images), [{}] * len(images)).scores.tolist()
    return {name: (_json(_score_body(images)), expected)}


def make_requests(
    seed: int = 0, largest: bool = False
) -> dict[str, tuple[bytes, int | list[float]]]:
    """Each kind → (body, expected): the scores for a good kind, the status for a bad one.

    ``largest``: one kind only, 16 images of 1024² (the default ``--max-request-pixels``).
    """
    g = torch.Generator().manual_seed(seed)
    if largest:
        return _good("good_largest", _smooth_pngs(16, 1024, g))
    small = encode_images(torch.rand(4, 3, 64, 64, generator=g))
    kinds: dict[str, tuple[bytes, int | list[float]]] = {}
    kinds |= _good("good_small", small)
    kinds |= _good("good_large", _smooth_pngs(8, 1024, g))  # 8 Mpx in ~6 MB
    raw = base64.b64decode(small[0])
    truncated = base64.b64encode(raw[: len(raw) // 2]).decode()
    not_image = base64.b64encode(b"this is not an image" * 10).decode()
    bomb = _compressible_png(3000)  # the case: 20 of these, 180 Mpx in ~0.6 MB
    kinds |= {
        "truncated_png": (_json(_score_body([truncated])), 400),
        "not_an_image": (_json(_score_body([not_image])), 400),
        "not_json": (b"\x80\x04 not json, not pickle", 400),
        "deep_json": (b"[" * 100_000 + b"]" * 100_000, 400),
        "bad_version": (_json({**_score_body(small), "version": 99}), 400),
        "too_many_images": (_json(_score_body([small[0]] * (MAX_IMAGES + 1))), 413),
        "pixel_bomb": (_json(_score_body([bomb] * 20)), 413),
        "too_many_bytes": (b"x" * (MAX_BYTES + 1), 413),
    }
    return kinds


class Server:
    """The reward server in a subprocess on 127.0.0.1; ``stop`` kills it."""

    def __init__(self, workers: int, queue: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "flowdppo.rewards.server", "--reward", "jpeg_compressibility"]
        cmd += ["--port", str(self.port), "--log-level", "error", "--workers", str(workers)]
        cmd += ["--queue", str(queue), "--max-bytes", str(MAX_BYTES)]
        cmd += ["--max-images", str(MAX_IMAGES)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("FLOWDPPO_REWARD_TOKEN", None)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)

    def health_s(self, timeout_s: float = 10.0) -> float | None:
        """Seconds ``GET /health`` took, or None when it did not answer ok."""
        start = time.monotonic()
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=timeout_s) as resp:
                ok = json.loads(resp.read()).get("status") == "ok"
        except (OSError, ValueError):
            return None
        return time.monotonic() - start if ok else None

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.health_s(2.0) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the reward server did not start (exit {self.proc.poll()})")
            time.sleep(0.1)

    def rss_mb(self) -> float:
        return _status_kb(self.proc.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        """The kernel's high-water mark of the server's RSS (exact, unlike sampling)."""
        return _status_kb(self.proc.pid, "VmHWM") / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def _status_kb(pid: int, key: str) -> float:
    """A ``/proc/PID/status`` field in kB; RSS through psutil where /proc is absent."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    import psutil

    return psutil.Process(pid).memory_info().rss / 1024


def post(url: str, body: bytes, timeout_s: float) -> tuple[int, Any, float]:
    """POST /score → (status, answer JSON or None, Retry-After seconds or 0)."""
    req = urllib.request.Request(url + "/score", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read()), 0.0
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read())
        except (OSError, ValueError):
            answer = None
        return exc.code, answer, float(exc.headers.get("Retry-After") or 0)


def client(url, kinds, order, deadline, retries, record: Callable[[dict], None]) -> None:
    """Send the kinds named in ``order`` one after another; a 503 is retried after Retry-After."""
    for kind in order:
        body, expected = kinds[kind]
        busy, status, answer, start = 0, None, None, time.monotonic()
        while time.monotonic() < deadline:
            try:
                status, answer, wait_s = post(url, body, timeout_s=60)
            except OSError as exc:  # a reset or a timeout: recorded, never retried
                status, answer = f"{type(exc).__name__}: {exc}", None
                break
            if status != 503 or busy >= retries:
                break
            busy += 1
            time.sleep(min(wait_s or 0.1, max(0.0, deadline - time.monotonic())))
        if status is None:
            break  # out of time before this request was sent
        if isinstance(expected, list):
            scores = answer.get("scores") if isinstance(answer, dict) else None
            ok = status == 200 and scores is not None and _close(scores, expected)
        else:
            ok = isinstance(status, int) and 400 <= status < 500 and status != 503
        record({"kind": kind, "status": status, "ok": ok, "busy": busy,
                "seconds": time.monotonic() - start})  # fmt: skip


def _close(got: list, expected: list[float]) -> bool:
    return len(got) == len(expected) and all(
        g is not None and abs(g - e) <= 1e-6 for g, e in zip(got, expected, strict=True)
    )


def run_load(
    clients: int = 16,
    requests: int = 25,
    workers: int = 2,
    queue: int = 4,
    retries: int = 20,
    max_seconds: float = 300.0,
    largest: bool = False,
) -> dict[str, Any]:
    """Start a server, run the load, stop the server → the report (see the module docstring)."""
    kinds = make_requests(largest=largest)
    names = sorted(kinds)
    server = Server(workers, queue)
    try:
        server.wait_ready()
        rss_before = server.rss_mb()
        results: list[dict] = []
        lock, done = threading.Lock(), threading.Event()
        samples, health = [rss_before], []

        def record(row: dict) -> None:
            with lock:
                results.append(row)

        def monitor() -> None:
            next_health = 0.0
            while not done.wait(0.02):
                samples.append(server.rss_mb())
                if time.monotonic() >= next_health:
                    health.append(server.health_s())
                    next_health = time.monotonic() + 0.25

        start = time.monotonic()
        deadline = start + max_seconds
        threads = [threading.Thread(target=monitor, daemon=True)]
        for c in range(clients):
            order = [names[(c * requests + j) % len(names)] for j in range(requests)]
            args = (server.url, kinds, order, deadline, retries, record)
            threads.append(threading.Thread(target=client, args=args, daemon=True))
        for t in threads:
            t.start()
        for t in threads[1:]:
            t.join(max(0.0, deadline - time.monotonic()) + 70)
        wall_s = time.monotonic() - start
        done.set()
        threads[0].join(5)
        time.sleep(2.0)  # let the server settle before "after"
        alive = server.proc.poll() is None and server.health_s() is not None
        report = _report(results, kinds, clients * requests)
        report |= {
            "clients": clients,
            "requests_per_client": requests,
            "workers": workers,
            "queue": queue,
            "wall_s": round(wall_s, 1),
            "rss_mb": {
                "before": round(rss_before, 1),
                "peak_sampled": round(max(samples), 1),
                "peak": round(server.peak_rss_mb(), 1),
                "after": round(server.rss_mb(), 1),
            },
            "health": {
                "probes": len(health),
                "failed": sum(h is None for h in health),
                "slowest_s": round(max((h for h in health if h is not None), default=0.0), 3),
            },
            "alive_at_end": alive,
        }
    finally:
        server.stop()
    report["passed"] = report["alive_at_end"] and report["good"]["wrong"] == 0
    report["passed"] = report["passed"] and report["bad"]["not_4xx"] == 0
    report["passed"] = report["passed"] and report["not_sent"] == 0
    return report


def _report(results: list[dict], kinds: dict, planned: int) -> dict[str, Any]:
    good = [r for r in results if isinstance(kinds[r["kind"]][1], list)]
    bad = [r for r in results if not isinstance(kinds[r["kind"]][1], list)]
    by_kind: dict[str, Counter] = {}
    for r in results:
        by_kind.setdefault(r["kind"], Counter())[str(r["status"])] += 1
    return {
        "planned": planned,
        "not_sent": planned - len(results),
        "good": {
            "sent": len(good),
            "scored_right": sum(r["ok"] for r in good),
            "wrong": sum(not r["ok"] for r in good),
        },
        "bad": {
            "sent": len(bad),
            "got_4xx": sum(r["ok"] for r in bad),
            "not_4xx": sum(not r["ok"] for r in bad),
        },
        "answers_503": sum(r["busy"] for r in results) + sum(r["status"] == 503 for r in results),
        "slowest_request_s": round(max((r["seconds"] for r in results), default=0.0), 2),
        "status_by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--requests", type=int, default=25, help="requests per client")
    p.add_argument("--workers", type=int, default=2, help="the server's --workers")
    p.add_argument("--queue", type=int, default=4, help="the server's --queue")
    p.add_argument("--retries", type=int, default=20, help="503 retries per request")
    p.add_argument("--max-seconds", type=float, default=300.0, help="time for the whole load")
    p.add_argument("--largest", action="store_true", help="only the largest admitted request")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    report = run_load(
        args.clients,
        args.requests,
        args.workers,
        args.queue,
        args.retries,
        args.max_seconds,
        args.largest,
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
