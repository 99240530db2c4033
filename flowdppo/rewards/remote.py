"""The ``remote`` reward: a client of ``flowdppo reward-server`` (see protocol.py for the format).

Images go out as PNG (8-bit, lossless after rounding) in JSON over HTTP; no pickle either way.
Connection failures, timeouts and 429/502/503/504 answers are retried with exponential backoff
(``backoff_s · 2^attempt``, capped at ``max_backoff_s``; at least the server's ``Retry-After``
within that cap), up to ``retries`` times; 400/401/413/500 answers are not retried (they would
fail again) and raise an error quoting the server.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any

import torch

from flowdppo.rewards.base import RewardOutput, register_reward
from flowdppo.rewards.protocol import (
    DEFAULT_MAX_BYTES,
    PROTOCOL_VERSION,
    TOKEN_ENV,
    encode_images,
    scores_from_json,
)
from flowdppo.rewards.utils import check_images, check_positive_int

logger = logging.getLogger(__name__)
_RETRY_STATUS = frozenset({429, 502, 503, 504})


class RemoteRewardError(RuntimeError):
    """The reward server refused the request, or could not be reached after all retries."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@register_reward("remote")
class RemoteReward:
    """Scores images with a reward served by ``flowdppo reward-server`` at ``url``."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        token_env: str = TOKEN_ENV,
        batch_size: int = 16,
        timeout_s: float = 120.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"remote.url must start with http:// or https://, got {url!r}")
        for field, value in (("timeout_s", timeout_s), ("backoff_s", backoff_s)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"remote.{field} must be > 0, got {value!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"remote.retries must be an integer >= 0, got {retries!r}")
        self.name = "remote"
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(token_env) or None
        self.batch_size = check_positive_int(batch_size, "remote.batch_size")
        self.max_bytes = check_positive_int(max_bytes, "remote.max_bytes")
        self.timeout_s, self.retries = float(timeout_s), retries
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.device = torch.device("cpu")

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        check_images(images, "remote")
        body = {
            "version": PROTOCOL_VERSION,
            "images": encode_images(images),
            "prompts": list(prompts),
            "metadata": list(metadata),
        }
        try:
            data = json.dumps(body, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"remote: prompts/metadata must be JSON-serialisable: {exc}") from exc
        if len(data) > self.max_bytes:
            raise RemoteRewardError(
                f"remote: request of {len(data)} bytes for {images.shape[0]} images exceeds "
                f"max_bytes={self.max_bytes}; lower remote.batch_size"
            )
        reply = self._post_with_retries("/score", data)
        scores = scores_from_json(reply.get("scores"), images.shape[0])
        details = {k: torch.tensor(_nan_for_none(v)) for k, v in reply.get("details", {}).items()}
        return RewardOutput(scores=scores, details=details)

    def _post_with_retries(self, path: str, data: bytes) -> dict[str, Any]:
        last: _Retryable | None = None
        for attempt in range(self.retries + 1):
            if last is not None:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                delay = max(delay, min(self.max_backoff_s, last.retry_after_s))
                logger.warning("remote %s: %s; retry %d in %.2fs", self.url, last, attempt, delay)
                time.sleep(delay)
            try:
                return self._post_once(path, data)
            except _Retryable as exc:
                last = exc
        raise RemoteRewardError(
            f"remote: {self.url}{path} failed after {self.retries + 1} attempts: {last}"
        )

    def _post_once(self, path: str, data: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            message = _error_message(exc)
            if exc.code in _RETRY_STATUS:
                wait_s = _retry_after_s(exc.headers.get("Retry-After"))
                raise _Retryable(f"HTTP {exc.code}: {message}", wait_s) from exc
            raise RemoteRewardError(
                f"remote: {self.url}{path} answered {exc.code}: {message}"
            ) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        try:
            reply = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise RemoteRewardError(f"remote: {self.url}{path} answered non-JSON: {exc}") from exc
        if not isinstance(reply, dict) or reply.get("version") != PROTOCOL_VERSION:
            raise RemoteRewardError(
                f"remote: unexpected reply from {self.url}{path}: {reply!r:.200}"
            )
        return reply


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error", exc.reason))
    except Exception:
        return str(exc.reason)


def _retry_after_s(value: str | None) -> float:
    """A ``Retry-After`` header in seconds (0 when absent, or an HTTP date we do not parse)."""
    try:
        return max(0.0, float(value)) if value is not None else 0.0
    except ValueError:
        return 0.0


def _nan_for_none(x: Any) -> Any:
    if isinstance(x, list):
        return [_nan_for_none(v) for v in x]
    return float("nan") if x is None else x
