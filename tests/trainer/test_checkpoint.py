"""``flowdppo.trainer.checkpoint``: complete-or-absent checkpoints, the ``latest`` marker and its
fallback, pruning, and an exact round trip of weights, optimizer, EMA and RNG."""

from __future__ import annotations

import shutil

import torch

from flowdppo.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from flowdppo.trainer.ema import EMA


class _Policy:
    """The two methods a checkpoint needs, over one linear layer."""

    def __init__(self) -> None:
        self.net = torch.nn.Linear(3, 2)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.net.named_parameters()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.net.named_parameters():
                p.copy_(state[n])


def _trained(seed: int):
    torch.manual_seed(seed)
    policy = _Policy()
    opt = torch.optim.AdamW(policy.net.parameters(), lr=0.1)
    ema = EMA(policy, 0.5)
    for _ in range(2):
        policy.net(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        opt.zero_grad()
        ema.update()
    return policy, opt, ema


def test_round_trip_is_exact(tmp_path) -> None:
    policy, opt, ema = _trained(0)
    rng = torch.get_rng_state()
    path = save_checkpoint(tmp_path, 7, policy, opt, ema)
    assert path.name == "iter_000007" and latest_checkpoint(tmp_path) == path
    torch.randn(10)  # move the RNG on
    other, opt2, ema2 = _trained(1)
    assert load_checkpoint(path, other, opt2, ema2) == 7
    assert all(
        torch.equal(a, b)
        for a, b in zip(policy.net.parameters(), other.net.parameters(), strict=True)
    )
    assert all(torch.equal(ema.shadow[k], ema2.shadow[k]) for k in ema.shadow)
    assert torch.equal(
        opt.state_dict()["state"][0]["exp_avg_sq"], opt2.state_dict()["state"][0]["exp_avg_sq"]
    )
    assert torch.equal(torch.get_rng_state(), rng)


def test_keeps_the_last_two_and_ignores_stale_temporaries(tmp_path) -> None:
    policy, opt, _ = _trained(0)
    for it in (1, 2, 3):
        save_checkpoint(tmp_path, it, policy, opt, None)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("iter_*")) == ["iter_000002", "iter_000003"]
    (root / ".tmp_iter_000004").mkdir()  # a crash while writing iteration 4
    assert latest_checkpoint(tmp_path) == root / "iter_000003"
    save_checkpoint(tmp_path, 4, policy, opt, None)
    assert not (root / ".tmp_iter_000004").exists()
    assert not (root / "iter_000004" / "ema.safetensors").exists()  # no EMA, no file


def test_latest_falls_back_to_the_newest_complete_folder(tmp_path) -> None:
    policy, opt, _ = _trained(0)
    save_checkpoint(tmp_path, 1, policy, opt, None)
    save_checkpoint(tmp_path, 2, policy, opt, None)
    root = tmp_path / "checkpoints"
    shutil.rmtree(root / "iter_000002")  # a crash while re-saving iteration 2
    assert latest_checkpoint(tmp_path) == root / "iter_000001"
    (root / "latest").unlink()
    assert latest_checkpoint(tmp_path) == root / "iter_000001"
    assert latest_checkpoint(tmp_path / "nothing") is None
