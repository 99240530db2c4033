"""The self-setting trust region on the tiny SD3 and FLUX pipelines, as on Shapes: the adaptive δ,
the noise floor, the alarms, the ratio diagnostic, the precision guard and the peers' units, each
through the real ``Trainer`` built from a config exactly as a user's run would be."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("flowdppo.trainer.trainer")

from test_trainer_tiny import _config  # tests/models is on sys.path (conftest)


def _rows(run) -> list[dict]:
    from flowdppo.trainer.logging import read_metrics

    return read_metrics(run, "train")


def _prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\na big blue cat\n")
    return path


@pytest.mark.parametrize(("target", "factor"), [(1e-20, 0.5), (1e20, 2.0)])
def test_the_adaptive_delta_tightens_and_loosens_on_a_diffusers_model(
    family, tmp_path, target, factor
):
    from flowdppo.trainer.trainer import Trainer

    cfg = _config(
        family,
        _prompts(tmp_path),
        "loss.delta_schedule=adaptive",
        f"loss.target_step_kl={target}",
        "loss.delta=1e-6",
        "optim.updates_per_iter=2",
    )
    Trainer(cfg, tmp_path / "run").train(3, progress=False)
    rows = _rows(tmp_path / "run")
    assert [r["trust/delta"] for r in rows] == pytest.approx([1e-6 * factor**i for i in range(3)])
    for r in rows:
        assert r["trust/measured_kl"] == r["kl/old_new_mean"] > 0  # the second update moved
        assert r["trust/target_kl"] == target


@pytest.mark.filterwarnings("ignore:iteration .* on-policy check failed")  # bf16: expected
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_the_noise_floor_is_zero_in_float32_and_positive_with_bfloat16_rollouts(family, tmp_path):
    from flowdppo.trainer.trainer import Trainer

    cfg = _config(family, _prompts(tmp_path), "loss.delta=1e-30")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a floor of 0: no warning even at δ = 1e-30
        Trainer(cfg, tmp_path / "fp32").train(2, progress=False)
    assert [r["check/noise_floor_kl"] for r in _rows(tmp_path / "fp32")] == [0.0, 0.0]

    t = Trainer(cfg, tmp_path / "bf16")
    velocity = t.policy.velocity

    def bf16_rollout(*args, **kwargs):
        if torch.is_grad_enabled():  # the update's forward: float32 as always
            return velocity(*args, **kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the rollout in bfloat16
            return velocity(*args, **kwargs).float()

    t.policy.velocity = bf16_rollout
    with pytest.warns(UserWarning, match="noise floor"):
        t.train(2, progress=False)
    assert all(r["check/noise_floor_kl"] > 0 for r in _rows(tmp_path / "bf16"))


def test_the_kl_budget_alarm_stops_a_diffusers_run_with_a_checkpoint(family, tmp_path):
    from flowdppo.trainer.trainer import Trainer

    cfg = _config(
        family,
        _prompts(tmp_path),
        "eval.every=2",
        "eval.per_category=2",
        f"eval.num_inference_steps={4}",
        "eval.kl_samples=2",
        "alarms.kl_budget=1e-30",
        "alarms.stop=true",
        "train.max_iters=4",
    )
    with pytest.warns(UserWarning, match="alarm/kl_budget"):
        Trainer(cfg, tmp_path / "run").train(4, progress=False)
    assert [r["iter"] for r in _rows(tmp_path / "run")] == [1, 2]
    assert (tmp_path / "run" / "checkpoints" / "iter_000002").is_dir()


def test_the_ratio_diagnostic_samples_terms_and_plots_them(family, tmp_path):
    from flowdppo.diagnostics import ratio_report, read_terms
    from flowdppo.trainer.trainer import Trainer

    cfg = _config(
        family, _prompts(tmp_path), "optim.updates_per_iter=2", "train.diagnostic_terms=2"
    )
    Trainer(cfg, tmp_path / "run").train(2, progress=False)
    terms = read_terms(tmp_path / "run")
    assert [(t["iter"], t["update"]) for t in terms] == [(i, u) for i in (1, 2) for u in (0, 1)]
    assert all(t["kl"] == 0.0 and t["log_rho"] == 0.0 for t in terms if t["update"] == 0)
    assert all(t["kl"] > 0 for t in terms if t["update"] == 1)
    out = tmp_path / "ratio.png"
    text = ratio_report([str(tmp_path / "run")], out, 1e-7, 1e-4)
    assert out.stat().st_size > 0 and "run" in text


def test_bfloat16_trainable_weights_of_a_diffusers_model_are_refused(family, tmp_path, monkeypatch):
    import flowdppo.trainer.trainer as trainer_mod

    real = trainer_mod.build_policy

    def bf16_policy(cfg, device):
        policy = real(cfg, device)
        for p in policy.trainable_parameters():
            p.data = p.data.to(torch.bfloat16) + 0.5  # LoRA B starts at 0: give it a value
        return policy

    monkeypatch.setattr(trainer_mod, "build_policy", bf16_policy)
    cfg = _config(family, _prompts(tmp_path), "optim.lr=1e-5")
    with pytest.raises(ValueError, match=r"lora.*optim\.allow_low_precision_weights"):
        trainer_mod.Trainer(cfg, tmp_path / "run")


def test_a_unirl_delta_ported_onto_the_models_own_schedule(family):
    """On the pipeline's own sigmas (its shift), UniRL's δ equals ours except on the step that
    starts at σ = 1, where ours is 100·(1 − σ_1) times larger."""
    from flowdppo.core.units import delta_from_unirl

    sigmas = family.policy().sigmas(10).tolist()
    assert sigmas[0] == pytest.approx(1.0) and 0 < sigmas[1] < 1
    ported = delta_from_unirl(1e-5, sigmas, [0, 1, 2])
    assert ported[0] == pytest.approx(1e-5 * 100 * (1 - sigmas[1]), rel=1e-6)
    assert ported[1:] == pytest.approx([1e-5, 1e-5], rel=1e-12)
