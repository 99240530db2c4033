"""In-process tests of flowdppo/rewards/server.py (FastAPI app, CLI arguments)."""

import argparse
import json

import pytest
import torch
from fastapi.testclient import TestClient

from flowdppo.rewards.base import RewardOutput
from flowdppo.rewards.protocol import encode_images
from flowdppo.rewards.server import create_app, main, register_cli


class EchoReward:
    """Score = the metadata's "value" (may be NaN); raises when a prompt is "boom"."""

    name, batch_size, device = "echo", 2, torch.device("cpu")

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, images, prompts, metadata):
        self.calls.append(images.shape[0])
        if "boom" in prompts:
            raise RuntimeError("judge crashed")
        scores = torch.tensor([m["value"] for m in metadata], dtype=torch.float32)
        return RewardOutput(scores=scores, details={"mean": images.mean(dim=(1, 2, 3))})


def _body(values, prompts=None):
    images = torch.full((len(values), 3, 8, 8), 0.25)
    prompts = prompts or ["p"] * len(values)
    meta = [{"value": v} for v in values]
    return {"version": 1, "images": encode_images(images), "prompts": prompts, "metadata": meta}


@pytest.fixture
def client_and_reward():
    reward = EchoReward()
    app = create_app(reward, "echo", token="tok", max_bytes=50_000)
    with TestClient(app) as client:
        client.headers["Authorization"] = "Bearer tok"
        yield client, reward


def test_scores_chunked_by_server_batch_size_with_nan_as_null(client_and_reward):
    client, reward = client_and_reward
    body = _body([1.0, 2.0, 3.0])
    body["metadata"][1]["value"] = float("nan")
    r = client.post("/score", content=json.dumps(body))  # json.dumps writes NaN for the fake
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["scores"] == [1.0, None, 3.0] and reply["reward"] == "echo"
    assert reward.calls == [2, 1]
    assert reply["details"]["mean"] == pytest.approx([64 / 255] * 3)  # 0.25 → 8-bit 64


def test_reward_failure_is_500_naming_the_reward(client_and_reward):
    client, _ = client_and_reward
    r = client.post("/score", json=_body([1.0], prompts=["boom"]))
    assert r.status_code == 500
    assert r.json()["error"] == "reward 'echo' failed: RuntimeError: judge crashed"


def test_token_required_on_every_route(client_and_reward):
    client, _ = client_and_reward
    for headers in ({"Authorization": "Bearer nope"}, {"Authorization": ""}):
        assert client.post("/score", json=_body([1.0]), headers=headers).status_code == 401
        assert client.get("/info", headers=headers).status_code == 401
    assert client.get("/info").json()["max_bytes"] == 50_000


def test_size_limit_and_malformed_requests(client_and_reward):
    client, reward = client_and_reward
    r = client.post("/score", content=b"x" * 50_001)
    assert r.status_code == 413 and "exceeds the limit of 50000 bytes" in r.json()["error"]
    bad_version = {**_body([1.0]), "version": 99}
    assert "version must be 1" in client.post("/score", json=bad_version).json()["error"]
    short = {**_body([1.0, 2.0]), "prompts": ["p"]}
    assert "'prompts' must be a list of 2 strings" in client.post("/score", json=short).text
    not_png = {**_body([1.0]), "images": ["bm90IGFuIGltYWdl"]}
    assert client.post("/score", json=not_png).status_code == 400
    assert reward.calls == []  # nothing malformed reached the model


def test_cli_registers_subcommand_with_loopback_default():
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["reward-server", "--reward", "jpeg_compressibility", "--port", "9"])
    assert args.host == "127.0.0.1" and args.port == 9 and callable(args.func)


def test_refuses_network_host_without_token(monkeypatch):
    monkeypatch.delenv("FLOWDPPO_REWARD_TOKEN", raising=False)
    with pytest.raises(SystemExit, match=r"refusing to serve on non-loopback host '0\.0\.0\.0'"):
        main(["--reward", "jpeg_compressibility", "--host", "0.0.0.0"])
    with pytest.raises(SystemExit, match="--reward-kwargs must be a JSON object"):
        main(["--reward", "jpeg_compressibility", "--reward-kwargs", "[1]"])
