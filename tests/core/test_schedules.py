"""Sigma schedules: hand-computed values and validation of model schedules."""

from __future__ import annotations

import pytest
import torch

from flowdppo.core.schedules import model_sigmas, shifted_sigmas


def test_shifted_sigmas_hand_values():
    """T = 4, s = 3: t = 1, .75, .5, .25, 0 -> σ = 1, 2.25/2.5, 1.5/2, .75/1.5, 0."""
    expected = torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0])
    out = shifted_sigmas(4, 3.0)
    assert out.dtype == torch.float32 and out.shape == (5,)
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=0)


def test_shift_one_is_linear_and_endpoints_are_exact():
    torch.testing.assert_close(shifted_sigmas(10, 1.0), torch.linspace(1, 0, 11), atol=1e-7, rtol=0)
    s = shifted_sigmas(40, 5.0)
    assert s[0].item() == 1.0 and s[-1].item() == 0.0 and bool((s[1:] < s[:-1]).all())


def test_model_sigmas_appends_terminal_zero_and_casts():
    out = model_sigmas(torch.tensor([1.0, 0.6, 0.2], dtype=torch.float64))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([1.0, 0.6, 0.2, 0.0]))
    torch.testing.assert_close(model_sigmas([0.9, 0.5, 0.0]), torch.tensor([0.9, 0.5, 0.0]))


@pytest.mark.parametrize(
    ("sigmas", "match"),
    [
        (torch.ones(2, 2), "sigmas must be 1-D"),
        ([1.0, 0.5, 0.5, 0.0], r"strictly decreasing, but sigmas\[1\]=0.5 <= sigmas\[2\]=0.5"),
        ([1.2, 0.5], r"sigmas must lie in \[0, 1\]"),
        ([1.0, float("nan")], "sigmas must be finite"),
        ([0.0], "at least one step"),
    ],
)
def test_model_sigmas_rejects_bad_schedules(sigmas, match):
    with pytest.raises(ValueError, match=match):
        model_sigmas(sigmas)


def test_shifted_sigmas_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_inference_steps must be an int >= 1, got 0"):
        shifted_sigmas(0)
    with pytest.raises(ValueError, match="shift must be > 0"):
        shifted_sigmas(10, 0.0)
