"""OCR reward: how well the text rendered in the image matches the quoted text of the prompt.

``score = 1 − min(1, lev(ocr, target) / len(target))`` where ``lev`` is the Levenshtein edit
distance and, by default, both strings are lower-cased with whitespace removed (as in Flow-GRPO's
OCR reward). ``target`` is ``metadata["text"]`` when given, else the first span in double quotes
(straight ``"…"`` or curly ``“…”``) of the prompt. ``ocr`` is the concatenation of all text lines
the engine recognises, top to bottom.

Engine: RapidOCR (PaddleOCR's PP-OCR detection + recognition models on onnxruntime), from the
``rapidocr-onnxruntime`` package, which ships its model weights inside the wheel: nothing is
downloaded at run time. It runs on CPU.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from flowdppo.rewards.base import RewardOutput, register_reward
from flowdppo.rewards.utils import check_images, check_positive_int, to_pil

_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”")


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def target_text(prompt: str, metadata: dict[str, Any]) -> str:
    """``metadata["text"]`` if present, else the first double-quoted span of ``prompt``."""
    if "text" in metadata:
        return str(metadata["text"])
    m = _QUOTED.search(prompt)
    if m is None:
        raise ValueError(f'ocr: no quoted text in prompt {prompt!r} and no metadata["text"]')
    return m.group(1) if m.group(1) is not None else m.group(2)


def text_similarity(recognised: str, target: str, ignore_case: bool, ignore_spaces: bool) -> float:
    """``1 − min(1, lev / len(target))`` after the optional normalisation; 1.0 for two empties."""
    if ignore_case:
        recognised, target = recognised.lower(), target.lower()
    if ignore_spaces:
        recognised, target = re.sub(r"\s+", "", recognised), re.sub(r"\s+", "", target)
    if not target:
        return 1.0 if not recognised else 0.0
    return 1.0 - min(1.0, levenshtein(recognised, target) / len(target))


@register_reward("ocr")
class OcrReward:
    """Text-rendering accuracy via RapidOCR (see the module docstring for the formula)."""

    def __init__(
        self,
        batch_size: int = 16,
        ignore_case: bool = True,
        ignore_spaces: bool = True,
        min_confidence: float = 0.0,
    ) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise ImportError(
                "reward 'ocr' needs rapidocr-onnxruntime: pip install 'flowdppo[rewards]'"
            ) from exc
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"ocr.min_confidence must be in [0, 1], got {min_confidence!r}")
        self.name = "ocr"
        self.batch_size = check_positive_int(batch_size, "ocr.batch_size")
        self.device = torch.device("cpu")
        self.ignore_case, self.ignore_spaces = bool(ignore_case), bool(ignore_spaces)
        self.min_confidence = float(min_confidence)
        self.engine = RapidOCR()

    def recognise(self, image: Any) -> str:
        """All recognised text lines of one PIL image, concatenated with spaces."""
        result, _ = self.engine(image)
        lines = [text for _, text, conf in result or [] if float(conf) >= self.min_confidence]
        return " ".join(lines)

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        check_images(images, self.name)
        targets = [target_text(p, m) for p, m in zip(prompts, metadata, strict=True)]
        scores = []
        for im, target in zip(to_pil(images), targets, strict=True):
            text = self.recognise(im)
            scores.append(text_similarity(text, target, self.ignore_case, self.ignore_spaces))
        return RewardOutput(scores=torch.tensor(scores, dtype=torch.float32))
