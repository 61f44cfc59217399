"""Reconstruction and classification metrics, torch-based and validated.

Every function accepts CPU or CUDA tensors (or anything ``torch.as_tensor`` takes), never
builds a graph, computes in float64 so results are reproducible across devices, and raises
``ValueError`` with a clear message on shape mismatch, NaN/inf or a wrong rank: a silently
broadcast or NaN-poisoned metric would corrupt a whole results table.

Image metrics use a *fixed* data range (default 1.0), never one inferred from the data,
so that numbers are comparable across attacks and datasets.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "RECONSTRUCTION_METRICS", "PSNR_CAP_DB", "mse", "mse_per_image", "psnr", "psnr_per_image",
    "ssim", "ssim_per_image", "accuracy", "accuracy_from_logits", "auc", "multiclass_auc",
    "chance_accuracy", "adjusted_rand_index", "reconstruction_metrics",
]

RECONSTRUCTION_METRICS: tuple[str, ...] = ("mse", "psnr", "ssim")
#: PSNR of a perfect reconstruction is +inf; we report this cap instead so means stay finite.
PSNR_CAP_DB = 100.0

# SSIM constants, as in Wang et al. 2004 and scikit-image's gaussian_weights=True mode.
_SSIM_SIGMA, _SSIM_TRUNCATE, _K1, _K2 = 1.5, 3.5, 0.01, 0.03
_SSIM_RADIUS = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)  # 5, scipy.ndimage's rule
_SSIM_WIN = 2 * _SSIM_RADIUS + 1  # 11


# ----------------------------------------------------------------------------- validation
def _tensor(x, name: str) -> Tensor:
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(x)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    if t.is_floating_point() or t.is_complex():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or inf")
    return t


def _pair(x, y, min_ndim: int = 1, exact_ndim: int | None = None) -> tuple[Tensor, Tensor]:
    """Validate two same-shaped finite tensors; return them as float64 on x's device."""
    x, y = _tensor(x, "x"), _tensor(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: x {tuple(x.shape)} vs y {tuple(y.shape)}")
    if exact_ndim is not None and x.ndim != exact_ndim:
        raise ValueError(f"expected a {exact_ndim}-D tensor, got shape {tuple(x.shape)}")
    if x.ndim < min_ndim:
        raise ValueError(f"expected at least {min_ndim} dims (N, ...), got shape {tuple(x.shape)}")
    return x.to(torch.float64), y.to(device=x.device, dtype=torch.float64)


def _check_range(data_range: float) -> float:
    dr = float(data_range)
    if not math.isfinite(dr) or dr <= 0:
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    return dr


def _labels(t, name: str) -> Tensor:
    t = _tensor(t, name)
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t


# ----------------------------------------------------------------------------- MSE / PSNR
def mse_per_image(x, y) -> Tensor:
    """Mean squared error of each image (first dim = batch), float64 tensor of shape (N,)."""
    x, y = _pair(x, y, min_ndim=2)
    return (x - y).pow(2).flatten(1).mean(dim=1)


def mse(x, y) -> float:
    """Mean squared error over all elements."""
    x, y = _pair(x, y)
    return float((x - y).pow(2).mean().item())


def psnr_per_image(x, y, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB, ``10*log10(data_range**2 / mse_i)``, capped at ``PSNR_CAP_DB``.

    The cap turns the +inf of identical images into 100 dB so averages stay finite.
    """
    dr = _check_range(data_range)
    m = mse_per_image(x, y)
    out = 10.0 * torch.log10(dr * dr / m.clamp_min(1e-300))
    return out.clamp(max=PSNR_CAP_DB)


def psnr(x, y, data_range: float = 1.0) -> float:
    """Mean over images of per-image PSNR (averaging dB, not MSE, as papers usually do)."""
    return float(psnr_per_image(x, y, data_range).mean().item())


# ----------------------------------------------------------------------------- SSIM
def _gaussian_window(device: torch.device) -> Tensor:
    r = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=torch.float64, device=device)
    g = torch.exp(-0.5 * (r / _SSIM_SIGMA) ** 2)
    g = g / g.sum()
    return torch.outer(g, g)


@torch.no_grad()
def ssim_per_image(x, y, data_range: float = 1.0) -> Tensor:
    """SSIM of each image in an N×C×H×W batch, float64 tensor of shape (N,).

    Reproduces ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=0)``: 11×11 Gaussian window, K1=0.01, K2=0.03,
    SSIM map cropped by (11-1)//2 = 5 pixels per border, averaged over pixels and channels.
    Because the crop equals the window radius, the kept region never touches the padding,
    so a 'valid' convolution gives exactly scikit-image's numbers. Like scikit-image, images
    need at least 11 pixels per side (the window size); smaller ones raise ValueError.
    """
    dr = _check_range(data_range)
    x, y = _pair(x, y, exact_ndim=4)
    n, c, h, w = x.shape
    if h < _SSIM_WIN or w < _SSIM_WIN:
        raise ValueError(
            f"SSIM needs images of at least {_SSIM_WIN}x{_SSIM_WIN} (Gaussian window), got {h}x{w}")
    win = _gaussian_window(x.device).expand(c, 1, _SSIM_WIN, _SSIM_WIN)

    def filt(t: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(t, win, groups=c)

    ux, uy = filt(x), filt(y)
    vx = filt(x * x) - ux * ux
    vy = filt(y * y) - uy * uy
    vxy = filt(x * y) - ux * uy
    c1, c2 = (_K1 * dr) ** 2, (_K2 * dr) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(2, 3)).mean(dim=1)


def ssim(x, y, data_range: float = 1.0) -> float:
    """Mean SSIM over an N×C×H×W batch (see ``ssim_per_image``)."""
    return float(ssim_per_image(x, y, data_range).mean().item())


def reconstruction_metrics(x_hat, x) -> dict[str, float]:
    """MSE, PSNR and SSIM of a reconstruction ``x_hat`` against ``x`` (N×C×H×W, range [0,1]).

    ``x_hat`` is clamped to [0, 1] first: any attacker can clip to the known pixel range, so
    out-of-range values should not be penalised (or rewarded) by the metrics.
    """
    x_hat = _tensor(x_hat, "x_hat").to(torch.float64).clamp(0.0, 1.0)
    return {"mse": mse(x_hat, x), "psnr": psnr(x_hat, x, 1.0), "ssim": ssim(x_hat, x, 1.0)}


# ----------------------------------------------------------------------------- classification
def accuracy(pred_labels, true_labels) -> float:
    """Fraction of equal labels, in [0, 1]."""
    p, t = _labels(pred_labels, "pred_labels"), _labels(true_labels, "true_labels")
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: pred {tuple(p.shape)} vs true {tuple(t.shape)}")
    return float((p.to(t.device) == t).to(torch.float64).mean().item())


def accuracy_from_logits(logits, true_labels) -> float:
    """Accuracy of argmax over the last dim of N×K logits."""
    lg = _tensor(logits, "logits")
    if lg.ndim != 2:
        raise ValueError(f"logits must be N×K, got shape {tuple(lg.shape)}")
    return accuracy(lg.argmax(dim=1), true_labels)


def group_count_metrics(counts, groups, true_labels) -> dict[str, float]:
    """Recovered label counts per group (G×K ``counts``) against the true counts of the examples
    ``groups`` assigns to each group (N group indices, N ``true_labels``): ``count_exact`` (fraction
    of groups whose every count is right) and ``count_l1`` (mean over groups of Σ_k |n̂_k − n_k|)."""
    c, g, t = _tensor(counts, "counts"), _labels(groups, "groups"), _labels(true_labels, "true_labels")
    if c.ndim != 2 or g.shape != t.shape or (len(g) and (int(g.min()) < 0 or int(g.max()) >= len(c))):
        raise ValueError(f"counts must be G×K and groups N indices below G; got counts {tuple(c.shape)}, "
                         f"groups {tuple(g.shape)}, labels {tuple(t.shape)}")
    if len(t) and int(t.max()) >= c.shape[1]:
        raise ValueError(f"a true label {int(t.max())} has no column among the {c.shape[1]} counts")
    truth = torch.zeros(c.shape, dtype=torch.float64).index_put_((g.cpu(), t.cpu()),
                                                                 torch.ones(len(t), dtype=torch.float64),
                                                                 accumulate=True)
    diff = (c.to(torch.float64).cpu() - truth).abs().sum(1)
    return {"count_exact": float((diff == 0).to(torch.float64).mean()), "count_l1": float(diff.mean()),
            "n_groups": float(len(c))}


def chance_accuracy(labels) -> float:
    """Accuracy of always predicting the majority class: the share of the most common label among
    ``labels``. The one chance line of label accuracy in arena (the scorer applies it to exactly the
    targets an attack labelled; for a one-vs-rest question it is the larger side's share, not
    1/classes): a label attack must beat it."""
    t = _labels(labels, "labels")
    _, counts = torch.unique(t, return_counts=True)
    return float(counts.max().item() / t.numel())


def auc(scores, binary_labels) -> float:
    """ROC AUC via the Mann–Whitney U statistic with average ranks for ties.

    Equal to ``sklearn.metrics.roc_auc_score``; tied scores count 1/2, which is exactly what
    average ranks give. Labels must be 0/1 (or bool); a single class raises ValueError.
    """
    s, y = _labels(scores, "scores"), _labels(binary_labels, "binary_labels")
    if s.shape != y.shape:
        raise ValueError(f"shape mismatch: scores {tuple(s.shape)} vs labels {tuple(y.shape)}")
    if s.is_complex():
        raise ValueError("scores must be real")
    y = y.to(s.device)
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("binary_labels must contain only 0 and 1")
    pos = y == 1
    n_pos = int(pos.sum().item())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC is undefined when only one class is present in binary_labels")
    _, inverse, counts = torch.unique(s.to(torch.float64), sorted=True, return_inverse=True,
                                      return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)  # 1-based rank of each tie group's last member
    avg_rank = ends - (counts.to(torch.float64) - 1) / 2
    rank_sum = avg_rank[inverse][pos].sum().item()
    u = rank_sum - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def multiclass_auc(scores, labels) -> float:
    """Macro one-vs-rest ROC AUC for N×K scores and integer labels in [0, K).

    Classes absent from ``labels`` have no positives, so their AUC is undefined: they are
    skipped and the mean is over present classes (sklearn's 'ovr'/'macro' with only those
    classes). Fewer than two present classes raises ValueError.
    """
    sc = _tensor(scores, "scores")
    y = _labels(labels, "labels")
    if sc.ndim != 2:
        raise ValueError(f"scores must be N×K, got shape {tuple(sc.shape)}")
    if sc.shape[0] != y.shape[0]:
        raise ValueError(f"shape mismatch: scores {tuple(sc.shape)} vs labels {tuple(y.shape)}")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise ValueError("labels must be integers")
    y = y.to(device=sc.device, dtype=torch.long)
    k = sc.shape[1]
    if bool(((y < 0) | (y >= k)).any()):
        raise ValueError(f"labels must lie in [0, {k})")
    present = torch.unique(y).tolist()
    if len(present) < 2:
        raise ValueError("multiclass AUC needs at least two classes present in labels")
    return float(sum(auc(sc[:, c], (y == c).long()) for c in present) / len(present))


def adjusted_rand_index(true_labels, clusters) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) of a clustering against the true labels: pair
    counting, corrected for chance, so 1 is the same partition up to renaming and 0 is the expected
    value of a random clustering with the same cluster sizes (chance is 0 by construction; it can be
    negative). Needs no naming of the clusters. Equal to ``sklearn.metrics.adjusted_rand_score``,
    including its convention that two partitions with no pair to disagree on (e.g. one cluster each,
    or all singletons each) score 1."""
    t, c = _labels(true_labels, "true_labels"), _labels(clusters, "clusters")
    if t.shape != c.shape:
        raise ValueError(f"shape mismatch: true_labels {tuple(t.shape)} vs clusters {tuple(c.shape)}")
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"adjusted_rand_index needs a non-empty 1-D labelling, got shape {tuple(t.shape)}")
    for name, v in (("true_labels", t), ("clusters", c)):
        if v.is_floating_point() and not bool((v == v.round()).all()):
            raise ValueError(f"{name} must be integers")
    _, ti = torch.unique(t.cpu(), return_inverse=True)
    _, ci = torch.unique(c.cpu(), return_inverse=True)
    table = torch.zeros(int(ti.max()) + 1, int(ci.max()) + 1, dtype=torch.float64)
    table.index_put_((ti, ci), torch.ones(len(ti), dtype=torch.float64), accumulate=True)

    def pairs(x: Tensor) -> float:
        return float((x * (x - 1) / 2).sum())

    n = float(t.numel())
    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    total = n * (n - 1) / 2
    expected = rows * cols / total if total else 0.0
    top = (rows + cols) / 2
    if top == expected:  # no pair the two partitions could disagree on beyond chance: sklearn's 1.0
        return 1.0
    return float((index - expected) / (top - expected))
