"""``flowdppo.trainer.checkpoint``: complete-or-absent checkpoints, the ``latest`` marker and its
fallback (inside the run only), pruning, an exact round trip of weights, optimizer, EMA and RNG,
no pickle (a pickled payload is refused unrun), and a manifest that names a damaged file."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from flowdppo.trainer.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_trainable,
    save_checkpoint,
)
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


def _no_manifest_legacy(path, opt, rng_payload) -> None:
    """Turn a checkpoint into the pre-manifest layout (``optimizer.pt``, ``rng.pt``)."""
    for name in ("manifest.json", "optimizer.safetensors", "optimizer.json", "rng.safetensors"):
        (path / name).unlink()
    torch.save(opt.state_dict(), path / "optimizer.pt")
    torch.save(rng_payload, path / "rng.pt")


def test_the_optimizer_round_trip_keeps_every_value_and_type(tmp_path) -> None:
    policy, opt, _ = _trained(0)
    path = save_checkpoint(tmp_path, 3, policy, opt, None)
    _, opt2, _ = _trained(1)
    load_checkpoint(path, _Policy(), opt2, None)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert isinstance(b["param_groups"][0]["betas"], tuple)
    for pid, entry in a["state"].items():
        assert set(entry) == set(b["state"][pid])
        assert all(torch.equal(v, b["state"][pid][k]) for k, v in entry.items())
        assert all(v.dtype == b["state"][pid][k].dtype for k, v in entry.items())


def test_nothing_is_pickled_and_every_file_is_in_the_manifest(tmp_path) -> None:
    policy, opt, ema = _trained(0)
    path = save_checkpoint(tmp_path, 1, policy, opt, ema)
    files = {p.name for p in path.iterdir()}
    assert not any(n.endswith((".pt", ".pth", ".pkl", ".bin")) for n in files)
    for p in path.iterdir():  # no pickle stream (b"\x80") and no torch zip (b"PK")
        assert p.read_bytes()[:2] not in (b"PK",) and p.read_bytes()[:1] != b"\x80", p
    manifest = json.loads((path / "manifest.json").read_text())["files"]
    assert set(manifest) == files - {"manifest.json"}
    assert all(manifest[n]["bytes"] == (path / n).stat().st_size for n in manifest)


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: a harmless stand-in for a shell command."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_payload_in_rng_pt_is_refused_and_never_runs(tmp_path) -> None:
    policy, opt, _ = _trained(0)
    path = save_checkpoint(tmp_path / "run", 1, policy, opt, None)
    marker = tmp_path / "pwned"
    _no_manifest_legacy(path, opt, {"torch": _Payload(marker)})
    # the payload is live: an unrestricted load runs it (what resume did before)
    probe = tmp_path / "probe.pt"
    torch.save({"torch": _Payload(tmp_path / "probe_ran")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe_ran").exists()
    with pytest.raises(CheckpointError, match=r"rng\.pt is refused"):
        load_checkpoint(path, _Policy(), _trained(1)[1], None)
    assert not marker.exists()


def test_a_legacy_checkpoint_of_plain_tensors_still_loads_exactly(tmp_path) -> None:
    policy, opt, _ = _trained(0)
    rng = torch.get_rng_state()
    path = save_checkpoint(tmp_path, 4, policy, opt, None)
    _no_manifest_legacy(path, opt, {"torch": rng})
    torch.randn(5)
    other, opt2, _ = _trained(1)
    assert load_checkpoint(path, other, opt2, None) == 4
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(
        opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"]
    )


@pytest.mark.parametrize(
    "name", ["trainable.safetensors", "optimizer.safetensors", "rng.safetensors"]
)
@pytest.mark.parametrize("damage", ["truncate", "empty", "flip"])
def test_a_damaged_file_is_named_before_anything_is_loaded(tmp_path, name, damage) -> None:
    policy, opt, _ = _trained(0)
    path = save_checkpoint(tmp_path, 2, policy, opt, None)
    data = (path / name).read_bytes()
    if damage == "truncate":
        (path / name).write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        (path / name).write_bytes(b"")
    else:
        (path / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    other = _Policy()
    before = [p.clone() for p in other.net.parameters()]
    with pytest.raises(CheckpointError, match=re.escape(str(path / name))):
        load_checkpoint(path, other, _trained(1)[1], None)
    assert all(torch.equal(a, b) for a, b in zip(before, other.net.parameters(), strict=True))
    if name == "trainable.safetensors":
        with pytest.raises(CheckpointError, match=re.escape(str(path / name))):
            load_trainable(other, path)


def test_a_missing_file_is_named(tmp_path) -> None:
    policy, opt, _ = _trained(0)
    path = save_checkpoint(tmp_path, 2, policy, opt, None)
    (path / "optimizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"optimizer\.json is missing"):
        load_checkpoint(path, _Policy(), _trained(1)[1], None)


@pytest.mark.parametrize("pointer", ["../../outside", "/tmp", "iter_000001/../../x", "iter_9"])
def test_the_latest_pointer_resolves_inside_the_run_only(tmp_path, pointer) -> None:
    policy, opt, _ = _trained(0)
    save_checkpoint(tmp_path / "run", 1, policy, opt, None)
    outside = tmp_path / "outside"  # a complete-looking checkpoint outside the run
    shutil.copytree(tmp_path / "run" / "checkpoints" / "iter_000001", outside)
    (tmp_path / "run" / "checkpoints" / "latest").write_text(pointer)
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoints" / "iter_000001"


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    """A full disk while writing: the error propagates, the previous checkpoint stays the latest
    and loads, and no temporary folder is left behind."""
    import flowdppo.trainer.checkpoint as ck

    policy, opt, _ = _trained(0)
    save_checkpoint(tmp_path, 1, policy, opt, None)
    real = ck.save_file

    def full_disk(tensors, filename, *a, **k):
        if filename.endswith("optimizer.safetensors"):
            raise OSError(28, "No space left on device")
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, 2, policy, opt, None)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["iter_000001", "latest"]
    assert load_checkpoint(latest_checkpoint(tmp_path), _Policy(), _trained(1)[1], None) == 1
