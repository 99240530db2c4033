"""In-process tests of flowdppo/rewards/server.py (FastAPI app, CLI arguments)."""

import argparse
import base64
import json
import struct
import zlib

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


def _png(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header declares ``width``×``height``; ``idat`` is its (here unchecked) pixel data.

    With a few bytes of ``idat`` this is what a decompression bomb looks like before it is decoded:
    any pixel decoding of it fails (truncated), so an answer about its size proves that only the
    header was read.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat_chunk = chunk(b"IDAT", idat) if idat else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat_chunk + chunk(b"IEND", b"")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture
def limited():
    reward = EchoReward()
    app = create_app(reward, "echo", max_images=4, max_request_pixels=3_000_000)
    with TestClient(app) as client:
        yield client, reward


def test_too_many_images_is_413_naming_the_limit(limited):
    client, reward = limited
    r = client.post("/score", json=_body([1.0] * 5))
    assert r.status_code == 413
    assert r.json()["error"] == (
        "request holds 5 images; the limit is 4 per request (--max-images)"
    )
    assert client.post("/score", json=_body([1.0] * 4)).status_code == 200
    assert reward.calls == [2, 2]


def test_total_pixels_is_413_from_the_headers_alone(limited):
    client, reward = limited
    bomb = _b64(_png(1000, 1000, idat=zlib.compress(b"\0" * 100)))  # 1 Mpx declared, ~150 bytes
    body = {"version": 1, "images": [bomb] * 4, "prompts": ["p"] * 4}
    r = client.post("/score", json=body)
    assert r.status_code == 413, r.text  # not 400 "truncated": the pixels were never decoded
    assert r.json()["error"] == (
        "request holds 4000000 pixels in 4 images (largest 1000x1000); the limit is "
        "3000000 per request (--max-request-pixels)"
    )
    # Under the limit, the same header-only images are decoded, fail, and are a 400 naming one.
    r = client.post("/score", json={**body, "images": [bomb] * 2, "prompts": ["p"] * 2})
    assert r.status_code == 400 and r.json()["error"].startswith(
        "bad request: images[0] cannot be decoded: "
    )
    assert reward.calls == []


def test_the_per_image_pixel_limit_stays():
    app = create_app(EchoReward(), "echo", max_pixels=100)
    with TestClient(app) as small:
        r = small.post("/score", json=_body([1.0]))  # 8x8 = 64 pixels: fine
        assert r.status_code == 200
        big = {"version": 1, "images": [_b64(_png(11, 10, idat=b"x"))], "prompts": ["p"]}
        r = small.post("/score", json=big)
    assert r.status_code == 400
    assert r.json()["error"] == "bad request: images[0] has 11x10 pixels > 100"


def _truncated_png() -> str:
    noise = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    raw = base64.b64decode(encode_images(noise)[0])
    return _b64(raw[: len(raw) // 2])


@pytest.mark.parametrize(
    ("make_body", "message"),
    [
        (
            lambda: {"version": 1, "images": [_truncated_png()], "prompts": ["p"]},
            "bad request: images[0] cannot be decoded: OSError: image file is truncated",
        ),
        (
            lambda: {"version": 1, "images": [_b64(b"GIF89a not really")], "prompts": ["p"]},
            "bad request: images[0] is not a readable image",
        ),
        (
            lambda: {"version": 1, "images": [_b64(b"%PDF-1.4\n" * 50)], "prompts": ["p"]},
            "bad request: images[0] is not a readable image",
        ),
        (
            lambda: "[" * 100_000 + "]" * 100_000,
            "bad request: body is nested too deeply to parse",
        ),
        (
            lambda: (
                '{"version": 1, "metadata": [' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "]}"
            ),
            "bad request: body is nested too deeply to parse",
        ),
        (
            lambda: '{"version": 1, "images": [], "n": ' + "9" * 5000 + "}",
            "bad request: body is not JSON: Exceeds the limit (4300 digits)",
        ),
    ],
    ids=["truncated_png", "gif_garbage", "pdf", "deep_list", "deep_metadata", "huge_int"],
)
def test_bad_input_is_400_saying_what_was_wrong(limited, make_body, message):
    client, reward = limited
    body = make_body()
    content = body if isinstance(body, str) else json.dumps(body)
    r = client.post("/score", content=content)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(message), r.json()["error"]
    assert reward.calls == []


def test_bad_limits_are_refused_naming_the_value():
    with pytest.raises(ValueError, match="max_images must be an integer >= 1, got 0"):
        create_app(EchoReward(), "echo", max_images=0)
    with pytest.raises(ValueError, match="queue must be an integer >= 0, got -1"):
        create_app(EchoReward(), "echo", queue=-1)
    with pytest.raises(SystemExit, match="--workers must be >= 1, got 0"):
        main(["--reward", "jpeg_compressibility", "--workers", "0"])
