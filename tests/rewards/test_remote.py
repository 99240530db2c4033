"""End-to-end tests of flowdppo/rewards/remote.py against a real reward server on loopback."""

import json
import logging
import urllib.error
import urllib.request

import pytest
import torch

from flowdppo.rewards.base import build_reward
from flowdppo.rewards.remote import RemoteRewardError

TOKEN = "s3cret-token"


def _images(b: int = 5, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(b, 3, size, size, generator=g)
    images[0] = 0.5  # one flat image
    return images


def test_remote_scores_equal_local_scores_and_batches(start_server):
    server = start_server("--reward", "jpeg_incompressibility", token=TOKEN).wait_ready()
    remote = build_reward("remote", url=server.url, token=TOKEN, batch_size=2)
    images = _images()
    prompts, meta = [f"p{i}" for i in range(5)], [{"i": i} for i in range(5)]
    local = build_reward("jpeg_incompressibility")(images, prompts, meta)
    out = remote(images, prompts, meta)
    assert out.scores.dtype == torch.float32 and out.scores.shape == (5,)
    torch.testing.assert_close(out.scores, local.scores, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.details["jpeg_kb"].float(), local.details["jpeg_kb"])


def test_wrong_token_is_rejected_without_retry(start_server):
    server = start_server("--reward", "jpeg_incompressibility", token=TOKEN).wait_ready()
    remote = build_reward("remote", url=server.url, token="wrong", retries=3)
    with pytest.raises(RemoteRewardError, match="answered 401: missing or wrong token"):
        remote(_images(1), ["p"], [{}])
    no_token = build_reward("remote", url=server.url, token=None, token_env="UNSET_ENV_VAR_X")
    with pytest.raises(RemoteRewardError, match="answered 401"):
        no_token(_images(1), ["p"], [{}])


def test_oversized_request_is_rejected(start_server):
    server = start_server(
        "--reward", "jpeg_incompressibility", "--max-bytes", "20000", token=TOKEN
    ).wait_ready()
    # A client with a larger limit than the server: the server answers 413 (not retried).
    remote = build_reward("remote", url=server.url, token=TOKEN, max_bytes=10**7, retries=3)
    with pytest.raises(RemoteRewardError, match=r"answered 413: request of .* exceeds the limit"):
        remote(_images(4, size=48), ["p"] * 4, [{}] * 4)
    # The client's own limit refuses before sending.
    small = build_reward("remote", url=server.url, token=TOKEN, max_bytes=1000)
    with pytest.raises(
        RemoteRewardError, match=r"exceeds max_bytes=1000; lower remote\.batch_size"
    ):
        small(_images(2)[1:], ["p"], [{}])  # one noise image: a few kB of PNG
    # A small request still passes on the same server.
    assert remote(_images(1, size=8), ["p"], [{}]).scores.shape == (1,)


def test_a_413_for_a_large_body_quotes_the_server_not_a_reset(start_server):
    """A 16.8 MB body against --max-bytes 20000: the server answers 413 at once; it reads and
    drops the rest of the body before closing, so the client reads that answer (it saw
    "Connection reset by peer" when the server closed on the unread body)."""
    server = start_server(
        "--reward", "jpeg_incompressibility", "--max-bytes", "20000", token=TOKEN
    ).wait_ready()
    remote = build_reward("remote", url=server.url, token=TOKEN, max_bytes=10**8, retries=0)
    with pytest.raises(
        RemoteRewardError,
        match=r"answered 413: request of \d{8} bytes exceeds the limit of 20000 bytes$",
    ):
        remote(_images(4, size=1024), ["p"] * 4, [{}] * 4)  # noise: 4 × 4.2 MB of PNG


def test_a_request_over_the_server_limits_quotes_the_flag(start_server):
    server = start_server(
        "--reward", "jpeg_incompressibility", "--max-images", "3", token=TOKEN
    ).wait_ready()
    remote = build_reward("remote", url=server.url, token=TOKEN, batch_size=4, retries=3)
    with pytest.raises(
        RemoteRewardError,
        match=r"answered 413: request holds 4 images; the limit is 3 per request \(--max-images\)",
    ):
        remote(_images(4, size=8), ["p"] * 4, [{}] * 4)


def test_server_killed_and_restarted_mid_run(start_server, caplog):
    server = start_server("--reward", "jpeg_compressibility", token=TOKEN).wait_ready()
    remote = build_reward(
        "remote", url=server.url, token=TOKEN, retries=40, backoff_s=0.1, max_backoff_s=0.5
    )
    images = _images(3)
    first = remote(images, ["a", "b", "c"], [{}] * 3).scores
    server.stop()
    start_server("--reward", "jpeg_compressibility", token=TOKEN, port=server.port)
    with caplog.at_level(logging.WARNING, logger="flowdppo.rewards.remote"):
        second = remote(images, ["a", "b", "c"], [{}] * 3).scores  # retries until it is back
    assert any("retry 1" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_unreachable_server_fails_after_bounded_retries(free_port):
    remote = build_reward(
        "remote", url=f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.01
    )
    with pytest.raises(RemoteRewardError, match="failed after 3 attempts"):
        remote(_images(1), ["p"], [{}])


def test_server_info_and_raw_protocol(start_server):
    server = start_server("--reward", "jpeg_compressibility", token=TOKEN).wait_ready()
    req = urllib.request.Request(server.url + "/info", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        info = json.loads(resp.read())
    assert info["reward"] == "jpeg_compressibility" and info["batch_size"] == 64
    bad = urllib.request.Request(
        server.url + "/score",
        data=b"\x80\x04not json or pickle",
        headers={"Authorization": f"Bearer {TOKEN}"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=10)
    assert err.value.code == 400


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://x"}, "remote.url must start with http"),
        ({"url": "http://x", "timeout_s": 0}, "remote.timeout_s must be > 0"),
        ({"url": "http://x", "retries": -1}, "remote.retries must be an integer >= 0"),
    ],
)
def test_bad_options_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_reward("remote", **kwargs)
