"""Tests for flowdppo/rewards/ocr.py: the real RapidOCR engine on text rendered with Pillow."""

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from flowdppo.rewards.base import build_reward
from flowdppo.rewards.ocr import levenshtein, target_text, text_similarity
from flowdppo.rewards.utils import from_pil


def _render(text: str) -> torch.Tensor:
    im = Image.new("RGB", (320, 64), "white")
    font = ImageFont.load_default(size=32)  # Pillow's bundled font: no system font needed
    ImageDraw.Draw(im).text((10, 12), text, fill="black", font=font)
    return from_pil([im])  # [1, 3, 64, 320]


@pytest.fixture(scope="module")
def ocr():
    return build_reward("ocr")


def test_right_text_scores_high_and_wrong_text_low(ocr):
    images = torch.cat([_render("Hello World"), _render("Hello World"), _render("")])
    prompts = ['a sign that says "Hello World"', "a sign that says “Goodbye Moon”", '"Hi"']
    scores = ocr(images, prompts, [{}, {}, {}]).scores
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert scores[0] >= 0.9
    assert scores[1] <= 0.5
    assert scores[2] == 0.0  # a blank image reads as nothing: distance = len(target)


def test_metadata_text_overrides_the_prompt(ocr):
    score = ocr(_render("OPEN 24"), ["a shop sign"], [{"text": "open 24"}]).scores
    assert score.item() >= 0.9


def test_levenshtein_and_similarity_by_hand():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0
    assert text_similarity("Hel1o World", "hello world", True, True) == pytest.approx(1 - 1 / 10)
    assert text_similarity("hello", "Hello", False, True) == pytest.approx(1 - 1 / 5)
    assert text_similarity("a much longer wrong text", "ab", True, True) == 0.0  # clipped at 0


def test_target_text_needs_quotes_or_metadata():
    assert target_text('say "x y"', {}) == "x y"
    assert target_text("say “z”", {}) == "z"
    with pytest.raises(ValueError, match="no quoted text in prompt 'a cat'"):
        target_text("a cat", {})
