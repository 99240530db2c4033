"""Wire format of the remote reward service (JSON only; images as base64 PNG; never pickle).

Request  ``POST /score``, header ``Authorization: Bearer <token>`` when the server has a token::

    {"version": 1, "images": ["<base64 PNG>", ...], "prompts": [...], "metadata": [{...}, ...]}

Response 200::

    {"version": 1, "reward": "<name>", "scores": [float | null, ...], "details": {"key": [...]}}

``null`` stands for a non-finite score (JSON has no NaN); the client turns it back into NaN so
that the caller's failure policy (raise or drop) applies. Errors answer ``{"error": "<message>"}``
with 400 (malformed request), 401 (missing or wrong token), 413 (request too large) or 500 (the
reward raised). ``GET /health`` answers ``{"status": "ok"}`` and ``GET /info`` the reward's name,
batch size and the server's limits (both need the token too).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any

import torch

from flowdppo.rewards.utils import from_pil, png_bytes, to_pil

PROTOCOL_VERSION = 1
TOKEN_ENV = "FLOWDPPO_REWARD_TOKEN"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # 64 MiB per request
DEFAULT_MAX_PIXELS = 4096 * 4096  # per image, guards against decompression bombs


class ProtocolError(ValueError):
    """A malformed request or response; the message says which field."""


def encode_images(images: torch.Tensor) -> list[str]:
    """[B, 3, H, W] float in [0, 1] → base64 PNG strings (8-bit, lossless after rounding)."""
    return [base64.b64encode(png_bytes(im)).decode("ascii") for im in to_pil(images)]


def decode_images(encoded: list[Any], max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Base64 PNG strings → [B, 3, H, W] float32 in [0, 1]; all images must share one size."""
    from PIL import Image

    pil = []
    for i, item in enumerate(encoded):
        if not isinstance(item, str):
            raise ProtocolError(f"images[{i}] must be a base64 string, got {type(item).__name__}")
        try:
            raw = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"images[{i}] is not valid base64: {exc}") from exc
        try:
            im = Image.open(io.BytesIO(raw))
        except Exception as exc:  # PIL raises several types for undecodable or huge images
            raise ProtocolError(f"images[{i}] is not a readable image: {exc}") from exc
        if im.format != "PNG":
            raise ProtocolError(f"images[{i}] must be a PNG, got {im.format}")
        if im.width * im.height > max_pixels:
            raise ProtocolError(f"images[{i}] has {im.width}x{im.height} pixels > {max_pixels}")
        pil.append(im.convert("RGB"))
    sizes = {im.size for im in pil}
    if len(sizes) > 1:
        raise ProtocolError(f"all images must have the same size, got {sorted(sizes)}")
    return from_pil(pil)


def scores_to_json(scores: torch.Tensor) -> list[float | None]:
    """[B] tensor → JSON list with ``None`` for non-finite values."""
    return [v if math.isfinite(v) else None for v in scores.double().tolist()]


def scores_from_json(values: Any, n: int) -> torch.Tensor:
    """JSON list (``None`` = NaN) → [n] float32; raise ProtocolError if it is not a list of n."""
    if not isinstance(values, list) or len(values) != n:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise ProtocolError(f"response 'scores' must be a list of {n} numbers, got {got}")
    out = []
    for v in values:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ProtocolError(f"response 'scores' holds a non-number: {v!r}")
        out.append(float("nan") if v is None else float(v))
    return torch.tensor(out, dtype=torch.float32)


def parse_request(body: Any, max_pixels: int) -> tuple[torch.Tensor, list[str], list[dict]]:
    """Validate a decoded ``/score`` JSON body → (images, prompts, metadata)."""
    if not isinstance(body, dict):
        raise ProtocolError("request body must be a JSON object")
    if body.get("version") != PROTOCOL_VERSION:
        raise ProtocolError(f"version must be {PROTOCOL_VERSION}, got {body.get('version')!r}")
    images, prompts = body.get("images"), body.get("prompts")
    metadata = body.get("metadata")
    if not isinstance(images, list) or not images:
        raise ProtocolError("'images' must be a non-empty list")
    n = len(images)
    if (
        not isinstance(prompts, list)
        or len(prompts) != n
        or not all(isinstance(p, str) for p in prompts)
    ):
        raise ProtocolError(f"'prompts' must be a list of {n} strings")
    if metadata is None:
        metadata = [{} for _ in range(n)]
    if (
        not isinstance(metadata, list)
        or len(metadata) != n
        or not all(isinstance(m, dict) for m in metadata)
    ):
        raise ProtocolError(f"'metadata' must be a list of {n} objects")
    return decode_images(images, max_pixels), prompts, metadata
