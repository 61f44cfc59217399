"""arena.scoring.metrics against scikit-image / scikit-learn references, plus identities and validation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import roc_auc_score

from arena.scoring import metrics as M


def _images(kind: str, n: int, c: int, s: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        x = torch.rand(n, c, s, s, generator=g)
        y = (x + 0.2 * torch.randn(n, c, s, s, generator=g)).clamp(0, 1)
    else:  # structured: gradients, stripes and a square, with a shifted/blurred-ish estimate
        i = torch.linspace(0, 1, s)
        base = torch.outer(i, 1 - i) + 0.5 * (torch.arange(s) % 4 < 2).float()[None, :]
        base[s // 4: s // 2, s // 4: s // 2] = 1.0
        x = (base / base.max()).expand(n, c, s, s).clone()
        x = x * torch.linspace(0.5, 1, n).view(n, 1, 1, 1)
        y = (torch.roll(x, 1, dims=-1) * 0.9 + 0.05 * torch.rand(n, c, s, s, generator=g)).clamp(0, 1)
    return x, y


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0, channel_axis=0)


@pytest.mark.parametrize("kind", ["random", "structured"])
@pytest.mark.parametrize("c,s", [(1, 28), (3, 32)])
def test_ssim_psnr_match_skimage(kind, c, s):
    x, y = _images(kind, 4, c, s, seed=c * 100 + s)
    per = M.ssim_per_image(y, x)
    ref = [_sk_ssim(y[i].double().numpy(), x[i].double().numpy()) for i in range(4)]
    assert per.shape == (4,)
    np.testing.assert_allclose(per.cpu().numpy(), ref, atol=1e-4)
    assert M.ssim(y, x) == pytest.approx(float(np.mean(ref)), abs=1e-4)
    ref_p = [peak_signal_noise_ratio(x[i].double().numpy(), y[i].double().numpy(), data_range=1.0)
             for i in range(4)]
    np.testing.assert_allclose(M.psnr_per_image(y, x).numpy(), ref_p, rtol=1e-9)
    assert M.psnr(y, x) == pytest.approx(float(np.mean(ref_p)), rel=1e-9)


def test_identities_and_cap():
    x, _ = _images("random", 3, 3, 32, seed=1)
    assert M.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert M.mse(x, x) == 0.0
    assert torch.all(M.mse_per_image(x, x) == 0)
    assert M.psnr(x, x) == M.PSNR_CAP_DB
    assert torch.all(M.psnr_per_image(x, x) == M.PSNR_CAP_DB)
    y = x.clone()
    y[0] = 1 - y[0]  # only image 0 differs: mean of finite and capped per-image values
    p = M.psnr_per_image(x, y)
    assert math.isfinite(M.psnr(x, y)) and p[1] == p[2] == M.PSNR_CAP_DB and p[0] < 30


def test_mse_and_data_range():
    x = torch.zeros(2, 1, 12, 12)
    y = torch.full((2, 1, 12, 12), 0.5)
    assert M.mse(x, y) == pytest.approx(0.25)
    assert M.psnr(x, y, data_range=1.0) == pytest.approx(10 * math.log10(4))
    assert M.psnr(x * 255, y * 255, data_range=255.0) == pytest.approx(10 * math.log10(4))
    assert M.ssim(x, y, data_range=1.0) == pytest.approx(
        _sk_ssim(x[0].numpy().astype(np.float64), y[0].numpy().astype(np.float64)), abs=1e-6)


def test_reconstruction_metrics_clamps():
    x, y = _images("random", 2, 1, 28, seed=3)
    out = M.reconstruction_metrics(y * 3 - 1, x)
    assert tuple(out) == M.RECONSTRUCTION_METRICS
    clamped = (y * 3 - 1).clamp(0, 1)
    assert out["mse"] == pytest.approx(M.mse(clamped, x))
    assert out["ssim"] == pytest.approx(M.ssim(clamped, x))
    assert all(isinstance(v, float) for v in out.values())


def test_grad_tensors_accepted():
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    assert isinstance(M.ssim(x, x.detach()), float)


@pytest.mark.parametrize("fn", [M.mse, M.psnr, M.ssim, M.mse_per_image, M.ssim_per_image])
def test_image_validation(fn):
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="shape mismatch"):
        fn(x, torch.rand(2, 1, 28, 27))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fn(x, bad)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        fn(bad, x)


def test_rank_and_size_validation():
    with pytest.raises(ValueError, match="4-D"):
        M.ssim(torch.rand(1, 28, 28), torch.rand(1, 28, 28))
    with pytest.raises(ValueError, match="at least 2 dims"):
        M.mse_per_image(torch.rand(5), torch.rand(5))
    with pytest.raises(ValueError, match="at least 2 dims"):
        M.psnr(torch.rand(5), torch.rand(5))
    for side in (6, 10):
        with pytest.raises(ValueError, match="at least"):
            M.ssim(torch.rand(1, 1, side, 28), torch.rand(1, 1, side, 28))
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(torch.rand(1, 1, 12, 12), torch.rand(1, 1, 12, 12), data_range=0)
    with pytest.raises(ValueError, match="empty"):
        M.mse(torch.rand(0), torch.rand(0))


@pytest.mark.parametrize("tie_heavy", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn(tie_heavy, seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.integers(0, 2, n)
    s = rng.normal(size=n) + 0.7 * y
    if tie_heavy:
        s = np.round(s)  # a handful of distinct values
    ref = roc_auc_score(y, s)
    assert M.auc(torch.tensor(s), torch.tensor(y)) == pytest.approx(ref, abs=1e-12)
    assert M.auc(torch.tensor(s, dtype=torch.float32), torch.tensor(y).bool()) == pytest.approx(
        roc_auc_score(y, s.astype(np.float32)), abs=1e-12)


def test_auc_edge_cases():
    assert M.auc(torch.ones(6), torch.tensor([0, 1, 0, 1, 1, 0])) == 0.5
    assert M.auc(torch.arange(4.0), torch.tensor([0, 0, 1, 1])) == 1.0
    assert M.auc(-torch.arange(4.0), torch.tensor([0, 0, 1, 1])) == 0.0
    with pytest.raises(ValueError, match="one class"):
        M.auc(torch.rand(5), torch.ones(5))
    with pytest.raises(ValueError, match="only 0 and 1"):
        M.auc(torch.rand(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="shape mismatch"):
        M.auc(torch.rand(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        M.auc(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="1-D"):
        M.auc(torch.rand(2, 2), torch.tensor([[0, 1], [1, 0]]))


@pytest.mark.parametrize("round_scores", [False, True])
def test_multiclass_auc_matches_sklearn(round_scores):
    rng = np.random.default_rng(7)
    n, k = 400, 5
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if round_scores:  # ties; renormalise so sklearn accepts them as probabilities
        p = np.round(p, 1) + 1e-3
        p = p / p.sum(1, keepdims=True)
    ref = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert M.multiclass_auc(torch.tensor(p), torch.tensor(y)) == pytest.approx(ref, abs=1e-10)


def test_multiclass_auc_absent_class_skipped():
    rng = np.random.default_rng(8)
    y = rng.choice([0, 1, 3], size=200)  # class 2 absent
    p = rng.dirichlet(np.ones(4), size=200)
    expected = np.mean([roc_auc_score(y == c, p[:, c]) for c in (0, 1, 3)])
    assert M.multiclass_auc(torch.tensor(p), torch.tensor(y)) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="two classes"):
        M.multiclass_auc(torch.rand(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        M.multiclass_auc(torch.rand(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="N×K"):
        M.multiclass_auc(torch.rand(4), torch.tensor([0, 1, 0, 1]))


def test_accuracy_and_chance():
    assert M.accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 0.75
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert M.accuracy_from_logits(logits, torch.tensor([1, 0, 0])) == pytest.approx(2 / 3)
    assert M.chance_accuracy(torch.tensor([3, 3, 1, 3, 0])) == 0.6
    assert M.chance_accuracy(torch.tensor([7])) == 1.0
    with pytest.raises(ValueError, match="shape mismatch"):
        M.accuracy(torch.tensor([1, 2]), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="N×K"):
        M.accuracy_from_logits(torch.rand(3), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="1-D"):
        M.chance_accuracy(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="empty"):
        M.chance_accuracy(torch.tensor([]))
