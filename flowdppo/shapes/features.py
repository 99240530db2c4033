"""The Shapes world's own feature network (docs/shapes.md, "Fidelity and diversity").

A small CNN trained on renderer images to name each cell's content: for each of the 16 cells,
one of 16 classes (0 = empty, 1 + 3 * colour + shape otherwise), cross-entropy. Its 128-d
penultimate layer (pre-activation) is the feature space of the world's Fréchet distance and diversity
(``flowdppo/shapes/metrics.py``): they encode what a person sees — which object is in which cell.

Architecture (images float32 [N, 3, 32, 32] in [0, 1]):
conv3×3(3→16)+ReLU, maxpool2 → conv3×3(16→32)+ReLU, maxpool2 → conv3×3(32→64)+ReLU, maxpool2
→ [N, 64, 4, 4] (one position per 8-px cell) → flatten → linear(1024→128) = feature
→ ReLU → linear(128→16·16) = cell logits [N, 16 cells, 16 classes]. 187,808 parameters.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from flowdppo.shapes.prompts import load_split, sample_scenes
from flowdppo.shapes.render import render
from flowdppo.shapes.world import COLORS, NUM_CELLS, SHAPES, Scenes

NUM_CLASSES = 1 + len(COLORS) * len(SHAPES)  # empty + 15 colour-shape classes
SHIPPED = ("assets", "shapes", "features.safetensors")


@dataclass(frozen=True)
class FeatureNetConfig:
    """Sizes of the feature network (saved in the safetensors metadata)."""

    channels: tuple[int, int, int] = (16, 32, 64)
    feature_dim: int = 128


class FeatureNet(nn.Module):
    """Per-cell content classifier whose penultimate layer is the world's feature space."""

    def __init__(self, config: FeatureNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or FeatureNetConfig()
        c1, c2, c3 = self.config.channels
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.fc = nn.Linear(c3 * NUM_CELLS, self.config.feature_dim)
        self.head = nn.Linear(self.config.feature_dim, NUM_CELLS * NUM_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """float32 [N, 3, 32, 32] in [0, 1] → features float32 [N, feature_dim].

        The features are the pre-activation of the penultimate layer: unlike the post-ReLU
        values (about half of whose units are always 0 after training, making covariances
        singular) they are full rank, and they separate noisy/blurred images from clean renders
        about twice as well in Fréchet distance (docs/shapes.md).
        """
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, 32, 32):
            raise ValueError(f"images: expected [N, 3, 32, 32], got {tuple(images.shape)}")
        x = (images.float() - 0.5) / 0.25
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # [N, c1, 16, 16]
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # [N, c2, 8, 8]
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # [N, c3, 4, 4]: one position per cell
        return self.fc(x.flatten(1))  # [N, feature_dim]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """float32 [N, 3, 32, 32] → cell logits [N, 16, NUM_CLASSES] (cell = row * 4 + col)."""
        return self.head(F.relu(self.features(images))).view(-1, NUM_CELLS, NUM_CLASSES)


def cell_labels(scenes: Scenes) -> torch.Tensor:
    """Per-cell class [N, 16] int64: 0 empty, else 1 + 3 * colour + shape."""
    occupied = scenes.shape >= 0
    cls = np.where(occupied, 1 + len(SHAPES) * scenes.color + scenes.shape, 0)
    return torch.from_numpy(cls.astype(np.int64))


def training_batch(
    n: int, rng: np.random.Generator, max_noise: float = 0.04
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random train-split scenes, rendered with light augmentation → (images, labels).

    Half the batch is anti-aliased; every image gets Gaussian pixel noise with a per-image
    σ ~ U(0, max_noise), so generated images (slightly noisy, soft edges) map sensibly.
    Returns images float32 [n, 3, 32, 32] in [0, 1] and labels int64 [n, 16].
    """
    train = load_split("train")
    specs = [train[i] for i in rng.integers(0, len(train), size=n)]
    scenes = sample_scenes(specs, rng)
    half = n // 2
    hard = render(_subset(scenes, slice(0, half)))
    soft = render(_subset(scenes, slice(half, n)), antialias=True)
    images = torch.cat([hard, soft])
    sigma = torch.from_numpy(rng.uniform(0, max_noise, size=(n, 1, 1, 1))).float()
    noise = torch.from_numpy(rng.standard_normal(images.shape)).float()
    return (images + sigma * noise).clamp_(0, 1), cell_labels(scenes)


def _subset(scenes: Scenes, sl: slice) -> Scenes:
    return Scenes(*(getattr(scenes, k)[sl] for k in ("shape", "color", "size", "oy", "ox")))


@torch.no_grad()
def cell_accuracy(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Per-cell accuracy over all cells, over occupied cells, and whole-image exactness."""
    pred = net(images).argmax(-1)  # [N, 16]
    right = pred == labels
    occupied = labels > 0
    return {
        "cell_acc": right.float().mean().item(),
        "occupied_cell_acc": right[occupied].float().mean().item(),
        "image_acc": right.all(1).float().mean().item(),
    }


def heldout_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh hard renders of test-split prompts (never seen in training) → (images, labels)."""
    rng = np.random.default_rng(seed)
    test = load_split("test")
    scenes = sample_scenes([test[i] for i in rng.integers(0, len(test), size=n)], rng)
    return render(scenes), cell_labels(scenes)


def train_feature_net(
    out_path: str | Path,
    steps: int = 3000,
    seed: int = 0,
    threads: int = 1,
    batch_size: int = 128,
    lr: float = 3e-3,
    max_seconds: float | None = None,
) -> dict[str, float]:
    """Train the feature net (Adam, cosine lr) and save it as safetensors with its config.

    Loss: mean over images and cells of cross-entropy(logits[n, cell], class[n, cell]).
    ``max_seconds`` stops early (the lr schedule still assumes ``steps``). Returns the held-out
    accuracies (``cell_accuracy`` on 1024 fresh test-split renders) and training statistics.
    """
    from tqdm import tqdm

    for name, v in (("steps", steps), ("threads", threads), ("batch_size", batch_size)):
        if v < 1:
            raise ValueError(f"{name}: must be >= 1, got {v}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = FeatureNet()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    start, done, loss = time.perf_counter(), 0, torch.tensor(float("nan"))
    bar = tqdm(range(steps), desc="feature net", mininterval=5.0)
    for _ in bar:
        images, labels = training_batch(batch_size, rng)
        loss = F.cross_entropy(net(images).flatten(0, 1), labels.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        done += 1
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    bar.close()
    net.eval()
    stats = cell_accuracy(net, *heldout_batch(1024, seed + 1))
    stats.update(steps=done, seconds=time.perf_counter() - start, final_loss=loss.item())
    save_feature_net(net, out_path, {"seed": seed, "batch_size": batch_size, "lr": lr, **stats})
    return stats


def save_feature_net(net: FeatureNet, path: str | Path, info: dict[str, object]) -> None:
    """Save weights (float16: the file stays well under 1 MB) with config + info as metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    meta = {"config": json.dumps(asdict(net.config)), "info": json.dumps(info)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def load_feature_net(path: str | Path | None = None) -> FeatureNet:
    """Load a feature net (default: the shipped ``assets/shapes/features.safetensors``), eval mode."""
    from safetensors import safe_open

    if path is None:
        path = Path(str(resources.files("flowdppo").joinpath(*SHIPPED)))
    if not Path(path).is_file():
        raise ValueError(f"path: no feature net at {str(path)!r}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118 (not a dict)
    cfg = json.loads(meta.get("config", "{}"))
    if "channels" in cfg:
        cfg["channels"] = tuple(cfg["channels"])
    with torch.random.fork_rng(devices=[]):  # its random init, overwritten, must not draw from
        net = FeatureNet(FeatureNetConfig(**cfg))  # the run's generator (exact resume)
    net.load_state_dict(state)
    return net.eval()


@torch.no_grad()
def extract_features(
    images: torch.Tensor, net: FeatureNet | None = None, batch_size: int = 512
) -> torch.Tensor:
    """Features of float32 images [N, 3, 32, 32] in [0, 1] → float32 [N, feature_dim]."""
    net = net if net is not None else _shipped()
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    chunks = [net.features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0, net.config.feature_dim)


_CACHE: dict[str, FeatureNet] = {}


def _shipped() -> FeatureNet:
    if "net" not in _CACHE:
        _CACHE["net"] = load_feature_net()
    return _CACHE["net"]


if __name__ == "__main__":  # python -m flowdppo.shapes.features [STEPS] [MAX_SECONDS]
    import sys

    out = resources.files("flowdppo").joinpath(*SHIPPED)
    n_steps = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else None
    print(train_feature_net(str(out), steps=n_steps, max_seconds=secs))
