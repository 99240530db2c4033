"""Small helpers shared by reward modules: image conversion and option checks."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch


def check_images(images: torch.Tensor, who: str) -> None:
    """Raise a clear error unless ``images`` is float [B, 3, H, W]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{who}: images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{who}: images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{who}: images must be floating point in [0, 1], got {images.dtype}")


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] float in [0, 1] → uint8 numpy [B, H, W, 3] (round, clamp)."""
    x = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()  # [B, H, W, 3]


def to_pil(images: torch.Tensor) -> list[Any]:
    """[B, 3, H, W] float in [0, 1] → list of RGB ``PIL.Image`` (8-bit, rounded)."""
    from PIL import Image

    return [Image.fromarray(a, mode="RGB") for a in to_uint8_hwc(images)]


def from_pil(pil_images: list[Any]) -> torch.Tensor:
    """List of equally sized PIL images → [B, 3, H, W] float32 in [0, 1]."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in pil_images]
    x = torch.from_numpy(np.stack(arrays))  # [B, H, W, 3] uint8
    return x.permute(0, 3, 1, 2).float() / 255.0


def png_bytes(pil_image: Any) -> bytes:
    """Lossless PNG encoding of one PIL image."""
    buf = io.BytesIO()
    pil_image.save(buf, format="PNG")
    return buf.getvalue()


def check_positive_int(value: Any, field: str) -> int:
    """Return ``value`` if it is an int ≥ 1, else raise naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
    return value


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" → CUDA if available else CPU; otherwise ``torch.device(device)``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
