"""The world's fidelity and diversity metrics (docs/shapes.md, "Fidelity and diversity").

Both live in the 128-d feature space of the project's own cell classifier
(``flowdppo/shapes/features.py``), the Shapes analogue of Inception features for FID.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg

from flowdppo.shapes.features import FeatureNet, extract_features


def _as_2d_float64(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D [N, D] array, got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 rows to fit a covariance, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains non-finite values")
    return arr.astype(np.float64)


def frechet_distance(
    feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray
) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (as FID).

    FD = ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^{1/2}), with μ the mean and Σ the unbiased
    covariance (N − 1) of each set; (Σa Σb)^{1/2} by ``scipy.linalg.sqrtm``, real part (the
    imaginary part is round-off). feats_a [Na, D], feats_b [Nb, D] → a float ≥ 0 (up to round-off).
    """
    a, b = _as_2d_float64(feats_a, "feats_a"), _as_2d_float64(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feats_b: feature dim {b.shape[1]} != feats_a's {a.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # singular product: regularise as pytorch-fid does
        eps = 1e-6 * np.eye(cov_a.shape[0])
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))


def shapes_fd(
    images: torch.Tensor, reference_images: torch.Tensor, net: FeatureNet | None = None
) -> float:
    """The world's "FID": ``frechet_distance`` of feature-net features of two image sets.

    images [N, 3, 32, 32], reference_images [M, 3, 32, 32], float32 in [0, 1] (e.g. generated
    images of the test prompts vs fresh renders of them); ``net`` defaults to the shipped one.
    """
    return frechet_distance(extract_features(images, net), extract_features(reference_images, net))


def group_diversity(
    feats: torch.Tensor | np.ndarray, group_ids: torch.Tensor | np.ndarray
) -> float:
    """Mean pairwise L2 feature distance within each group, averaged over groups.

    diversity = (1/|G|) Σ_g (2 / (n_g (n_g − 1))) Σ_{i<j in g} ‖f_i − f_j‖₂.
    feats [N, D], group_ids [N] (any hashable ints, e.g. the prompt index of each sample);
    every group needs ≥ 2 members. Returns a float ≥ 0, 0 iff every group is feature-identical.
    """
    f = _as_2d_float64(feats, "feats")
    ids = np.asarray(group_ids.cpu() if isinstance(group_ids, torch.Tensor) else group_ids)
    if ids.shape != (f.shape[0],):
        raise ValueError(f"group_ids: expected shape ({f.shape[0]},), got {ids.shape}")
    per_group = []
    for g in np.unique(ids):
        x = f[ids == g]  # [n_g, D]
        if len(x) < 2:
            raise ValueError(f"group_ids: group {g.item()!r} has {len(x)} member; need >= 2")
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))  # [n_g, n_g]
        iu = np.triu_indices(len(x), k=1)
        per_group.append(d[iu].mean())
    return float(np.mean(per_group))


def shapes_diversity(
    images: torch.Tensor, group_ids: torch.Tensor | np.ndarray, net: FeatureNet | None = None
) -> float:
    """``group_diversity`` of feature-net features of images float32 [N, 3, 32, 32] in [0, 1]."""
    return group_diversity(extract_features(images, net), group_ids)
