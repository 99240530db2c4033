"""flowdppo/rewards/server.py under concurrent requests: a real uvicorn server on 127.0.0.1 in a
thread, serving a reward that blocks until the test releases it."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import uvicorn

from flowdppo.rewards.base import RewardOutput, build_reward
from flowdppo.rewards.protocol import encode_images
from flowdppo.rewards.server import create_app

WAIT_S = 30.0  # no test waits longer than this for anything


class BlockingReward:
    """Score 1 per image; each call waits until ``release`` is set (at most WAIT_S)."""

    name, batch_size, device = "blocking", 64, torch.device("cpu")

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.calls = 0

    def __call__(self, images, prompts, metadata):
        self.calls += 1
        self.started.set()
        self.release.wait(WAIT_S)
        return RewardOutput(scores=torch.ones(images.shape[0]), details={})


@pytest.fixture
def serve(free_port) -> Iterator:
    """``serve(app) -> url``: uvicorn on a free loopback port in a thread, stopped at teardown."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + WAIT_S
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(WAIT_S)


def _score_body(n: int = 1) -> bytes:
    images = encode_images(torch.full((n, 3, 8, 8), 0.5))
    return json.dumps({"version": 1, "images": images, "prompts": ["p"] * n}).encode()


def _post(url: str, data: bytes) -> tuple[int, dict, Any]:
    """POST → (status, JSON answer, headers), whatever the status."""
    req = urllib.request.Request(url + "/score", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=WAIT_S) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def _post_in_thread(url: str, data: bytes, results: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(_post(url, data)), daemon=True)
    thread.start()
    return thread


def test_health_answers_while_a_request_is_scored(serve):
    reward = BlockingReward()
    url = serve(create_app(reward, "blocking"))
    results: list = []
    scoring = _post_in_thread(url, _score_body(3), results)
    assert reward.started.wait(WAIT_S)
    start = time.monotonic()
    with urllib.request.urlopen(url + "/health", timeout=5) as resp:
        assert json.loads(resp.read()) == {"status": "ok"}
    assert time.monotonic() - start < 2.0
    assert results == []  # the score request is still being scored
    reward.release.set()
    scoring.join(WAIT_S)
    assert results[0][:2] == (200, {"version": 1, "reward": "blocking", "scores": [1.0] * 3,
                                    "details": {}})  # fmt: skip


def test_a_full_queue_is_503_with_retry_after(serve):
    reward = BlockingReward()
    url = serve(create_app(reward, "blocking", workers=1, queue=1))
    results: list = []
    threads = [_post_in_thread(url, _score_body(), results)]
    assert reward.started.wait(WAIT_S)  # one request holds the only worker
    threads += [_post_in_thread(url, _score_body(), results) for _ in range(3)]
    deadline = time.monotonic() + WAIT_S
    while len(results) < 2 and time.monotonic() < deadline:  # two of the three are refused
        time.sleep(0.02)
    busy = [r for r in results if r[0] == 503]
    assert len(busy) == 2, results
    for _, answer, headers in busy:
        assert answer["error"].startswith(
            "busy: at its limit of 2 requests scored or queued (--workers 1, --queue 1); retry in "
        )
        assert int(headers["Retry-After"]) >= 1
    reward.release.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert sorted(r[0] for r in results) == [200, 200, 503, 503]
    assert reward.calls == 2
    assert _post(url, _score_body())[0] == 200  # the slots were all given back


@pytest.mark.parametrize("status", [413, 503])
def test_a_refused_large_body_is_answered_not_reset(serve, status):
    """urllib sends ``Connection: close``: closing on the unread rest of a 16 MB body made the
    client see "connection reset" instead of the answer; the server now drains it first."""
    reward = BlockingReward()
    if status == 413:
        url = serve(create_app(reward, "blocking", max_bytes=20_000))
    else:
        url = serve(create_app(reward, "blocking", workers=1, queue=0))
        holder: list = []
        _post_in_thread(url, _score_body(), holder)
        assert reward.started.wait(WAIT_S)
    code, answer, _ = _post(url, b"x" * (16 << 20))
    reward.release.set()
    assert code == status
    expected = (
        "request of 16777216 bytes exceeds" if status == 413 else "busy: at its limit of 1 requests"
    )
    assert answer["error"].startswith(expected)


def test_the_client_waits_as_long_as_retry_after_says(serve):
    reward = BlockingReward()
    url = serve(create_app(reward, "blocking", workers=1, queue=0))
    holder: list = []
    _post_in_thread(url, _score_body(), holder)
    assert reward.started.wait(WAIT_S)
    threading.Timer(1.5, reward.release.set).start()
    # Its own backoff alone (0.01, 0.02, 0.04 s) would give up before the worker is free.
    remote = build_reward("remote", url=url, retries=3, backoff_s=0.01, max_backoff_s=5.0)
    start = time.monotonic()
    out = remote(torch.full((2, 3, 8, 8), 0.5), ["a", "b"], [{}, {}])
    assert out.scores.tolist() == [1.0, 1.0]
    assert 1.0 <= time.monotonic() - start < 10.0
