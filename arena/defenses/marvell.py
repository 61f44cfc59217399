"""`marvell`: optimised Gaussian noise on the cut gradient the label owner returns (binary labels).

Paper: O. Li, J. Sun, X. Yang, W. Gao, H. Zhang, J. Xie, V. Smith, C. Wang, "Label leakage and
protection in two-party split learning", ICLR 2022, §4 (Marvell; authors' code
OscarcarLi/label-protection, read for reference, not copied). Threat model: the label owner (our
``u-shaped`` and ``label-only`` setups) returns to the server, per example, the gradient of the loss
with respect to the server's output; Li et al.'s norm and direction attacks read the label from it.

Mechanism, per training batch, inside the label owner before anything is sent (a cut-gradient hook):
model each class's flattened gradients as an isotropic Gaussian, N(ḡ₀, u·I) for the negatives
(label 0) and N(ḡ₁, v·I) for the positives (label 1): ḡ the class means, u and v the per-coordinate
variances averaged over the d coordinates, p the batch's fraction of positives. Add to each
example of class y noise N(0, Σ_y) with Σ_y = λ₁ʸ·ŵŵᵀ + λ₂ʸ·(I − ŵŵᵀ), ŵ = (ḡ₁−ḡ₀)/‖ḡ₁−ḡ₀‖ (a
component along the difference of the means plus a spherical part), the four variances chosen to
minimise the symmetrised KL divergence between the two noisy class distributions,

    sumKL = ½[(u+λ₁⁰+g)/(v+λ₁¹) + (v+λ₁¹+g)/(u+λ₁⁰) + (d−1)((u+λ₂⁰)/(v+λ₂¹) + (v+λ₂¹)/(u+λ₂⁰))] − d,

g = ‖ḡ₁−ḡ₀‖², subject to the power budget p·trΣ₁ + (1−p)·trΣ₀ ≤ P = s·g. The authors solve it by
alternating 1-D convex minimisations; `solve` uses the problem's structure instead. (1) The spherical
terms depend only on the ratio (u+λ₂⁰)/(v+λ₂¹), best at 1: only the class with the smaller variance
gets spherical noise, at most up to equality. (2) Power left unused would lower sumKL if spent
scaling both along-ŵ variances by the same factor, so the budget is spent in full. What is left is
two numbers: the share ρ of the budget spent on the spherical part (searched on a grid, refined
around its minimum) and the positives' share β of the rest along ŵ (sumKL is convex in β for a
fixed ρ: golden-section search). A few milliseconds a batch; deterministic. The tests check it against a
generic constrained optimiser over the four variances, and it never needs the authors' λ₁ʸ ≥ λ₂ʸ
(their sampler's restriction).

What the server still sees: a noisy per-example cut gradient for every example (``removes`` is
empty: every label attack still runs, against noisier gradients) and everything else of the setup.
The noise is in the training signal itself: the server's and the client's parts train on the noisy
gradient (the cost is in test accuracy). At test time nothing changes (no gradients flow).

Batches with only one class: there are no two class means to separate, so the noise of the last
batch that had both classes is reused (its ŵ and variances, per label); before any such batch the
gradient is sent as it is. Counted in the report (``marvell_single_class_batches``); with batch 64
and 10% positives about one batch in 850.

Binary labels only (`not_applicable`: an n/a cell with the reason, in a K-class task). Strength:
``s`` ≥ 0, the power budget relative to ‖ḡ₁−ḡ₀‖². Li et al. sweep it from 0.01 to 25; their
published run script uses 0.1, which is the default here (the authors' operating point, not one
tuned on our data). ``s = 0`` is the identity: the setup is returned unchanged and no random number
is drawn, so it reproduces `none` bit for bit (tested).

Measured on fashion-mnist-binary (T-shirt/top against the rest; LeNet, u-shaped, depth 1, 10,000
private images, 3 epochs, seed 0, the attacks over the last 8 batches), as norm-label leak AUC;
cosine-label leak AUC / label accuracy; test accuracy; median sumKL after the noise; noise power
over gradient power: undefended 0.93; 1.00 / 1.00; 0.955. s = 0.1: 0.60; 0.96 / 0.70; 0.956; 30;
0.57. s = 0.25: 0.49; 0.93 / 0.62; 0.955; 6.0; 1.5. s = 1: 0.50; 0.50 / 0.42; 0.953; 0.96; 8.0.
s = 4: 0.52; 0.57 / 0.55; 0.944; 0.25; 39. So the default stops the norm attack but not the
direction attack; s = 1 stops both here. Test accuracy understates the cost on a 10%-positive task
(always answering "rest" scores 0.900): the model's test AUC fell from 0.980 to 0.977 (s = 0.1) and
0.964 (s = 1) in a separate run.

Report: ``marvell_s``; medians over the noised batches of the sumKL before and after the noise
(``marvell_sumkl_before``/``_after``; medians because a batch with a single positive has an
infinite sumKL before) and of the expected noise power relative to the batch's mean squared
gradient norm (``marvell_noise_to_signal``); ``marvell_batches`` (batches with both classes),
``marvell_single_class_batches``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..params import check_positive_float
from ..protocol.train import SplitSetup
from .base import Defense, register_defense

GRID, ROUNDS = 257, 2  # the outer search: grid points, refinement rounds around the minimum
GOLDEN, INV_PHI = 26, (math.sqrt(5) - 1) / 2  # the inner golden-section search: 0.618**26 ≈ 4e-6


@dataclass(frozen=True)
class Solution:
    """Noise variances per class: along ŵ (``neg_along`` = λ₁⁰, ``pos_along`` = λ₁¹) and in each of
    the d−1 directions orthogonal to it (``neg_perp`` = λ₂⁰, ``pos_perp`` = λ₂¹); the sumKL reached."""

    neg_along: float
    neg_perp: float
    pos_along: float
    pos_perp: float
    sumkl: float

    def power(self, p: float, d: int) -> float:
        """The expected squared noise norm, p·trΣ₁ + (1−p)·trΣ₀."""
        return (p * (self.pos_along + (d - 1) * self.pos_perp)
                + (1 - p) * (self.neg_along + (d - 1) * self.neg_perp))


def _ratio_pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a/b + b/a, with two zero variances (identical point masses) giving 2 and one giving inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = a / b + b / a
    out = np.where((a == 0) & (b == 0), 2.0, out)
    return np.where(np.isnan(out), np.inf, out)


def sum_kl(u: float, v: float, d: int, g: float, neg_along, neg_perp, pos_along, pos_perp) -> np.ndarray:
    """KL(N₀‖N₁) + KL(N₁‖N₀) of the two noisy class Gaussians (the objective; broadcasts)."""
    a, b = u + np.asarray(neg_along, float), v + np.asarray(pos_along, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(g == 0, 0.0, g / a + g / b)
    along = _ratio_pair(a, b) + np.where(np.isnan(mean), np.inf, mean)
    perp = (d - 1) * _ratio_pair(u + np.asarray(neg_perp, float), v + np.asarray(pos_perp, float)) \
        if d > 1 else 0.0
    return 0.5 * (along + perp) - d


def solve(u: float, v: float, d: int, g: float, p: float, power: float) -> Solution:
    """Minimise `sum_kl` over the four variances subject to p·trΣ₁ + (1−p)·trΣ₀ ≤ ``power``.

    ``u``, ``v``: the negatives' and positives' per-coordinate gradient variances; ``d`` the
    dimension; ``g`` = ‖ḡ₁−ḡ₀‖²; ``p`` ∈ (0, 1) the fraction of positives."""
    if not (0 < p < 1) or d < 1 or min(u, v, g, power) < 0:
        raise ValueError(f"solve needs 0 < p < 1, d >= 1 and u, v, g, power >= 0; got u={u}, v={v}, d={d}, "
                         f"g={g}, p={p}, power={power}")
    if power == 0:
        return Solution(0.0, 0.0, 0.0, 0.0, float(sum_kl(u, v, d, g, 0, 0, 0, 0)))
    k = g if g > 0 else max(u, v, power)  # solve in units of g: the problem is scale-free
    u, v, g, power = u / k, v / k, g / k, power / k
    # the spherical part: only the smaller variance is raised, at most to the larger one
    neg_low = u <= v
    perp_cap = 0.0 if d == 1 else ((1 - p) * (d - 1) * (v - u) if neg_low else p * (d - 1) * (u - v))
    perp_max = min(power, perp_cap)

    def variances(rho: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, ...]:
        spent = rho * perp_max  # on the spherical part
        rest = power - spent  # along ŵ: a share beta to the positives, the rest to the negatives
        perp = spent / ((1 - p if neg_low else p) * max(d - 1, 1))
        zero = np.zeros_like(perp)
        return ((1 - beta) * rest / (1 - p), perp if neg_low else zero, beta * rest / p,
                zero if neg_low else perp)

    def objective(rho: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """2·sumKL + 2d, lean (no special cases: u ≠ v when the spherical part is raised, and g > 0)."""
        l10, l20, l11, l21 = variances(rho, beta)
        a, b = u + l10, v + l11
        t = a / b + b / a + g / a + g / b
        if d > 1:
            t = t + (d - 1) * ((u + l20) / (v + l21) + (v + l21) / (u + l20) if u != v else 2.0)
        return np.where(np.isnan(t), np.inf, t)

    def best_share(rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each rho, the positives' share beta minimising sumKL (convex in beta: golden section)."""
        lo, hi = np.zeros_like(rho), np.ones_like(rho)
        c, e = hi - INV_PHI, lo + INV_PHI  # interior points, c < e
        fc, fe = objective(rho, c), objective(rho, e)
        for _ in range(GOLDEN):
            left = fc <= fe  # the minimum is in [lo, e], else in [c, hi]
            lo, hi = np.where(left, lo, c), np.where(left, e, hi)
            new = np.where(left, hi - INV_PHI * (hi - lo), lo + INV_PHI * (hi - lo))
            fn = objective(rho, new)
            c, e = np.where(left, new, e), np.where(left, c, new)
            fc, fe = np.where(left, fn, fe), np.where(left, fc, fn)
        cands = np.stack([(lo + hi) / 2, np.zeros_like(rho), np.ones_like(rho)])  # the ends: boundary optima
        vals = np.stack([objective(rho, x) for x in cands])
        k = np.argmin(vals, axis=0)
        pick = np.arange(len(rho))
        return cands[k, pick], vals[k, pick]

    lo, hi = 0.0, 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(ROUNDS if perp_max > 0 else 1):
            rho = np.linspace(lo, hi, GRID) if perp_max > 0 else np.zeros(1)
            beta, f = best_share(rho)
            i = int(np.argmin(f))
            best = (rho[i], beta[i])
            step = (hi - lo) / (GRID - 1)
            lo, hi = max(rho[i] - step, 0.0), min(rho[i] + step, 1.0)
    lam = [float(x) * k for x in variances(np.array(best[0]), np.array(best[1]))]
    return Solution(*lam, sumkl=float(sum_kl(u * k, v * k, d, g * k, *lam)))


@dataclass
class _State:
    """What the hook keeps between batches of one training run (reset by each apply)."""

    last: tuple[torch.Tensor, Solution] | None = None  # ŵ and the variances of the last two-class batch
    single: int = 0  # batches with one class only
    kl_before: list[float] = field(default_factory=list)  # per noised batch
    kl_after: list[float] = field(default_factory=list)
    nsr: list[float] = field(default_factory=list)


def marvell_noise(grad: torch.Tensor, labels: torch.Tensor, s: float, gen: torch.Generator,
                  state: _State) -> torch.Tensor:
    """The gradient the label owner sends: ``grad`` plus Marvell's noise for this batch's labels."""
    g = grad.detach().flatten(1).double()
    pos = labels.to(g.device) == 1
    n_pos, d = int(pos.sum()), g.shape[1]
    if 0 < n_pos < len(g):
        m1, m0 = g[pos].mean(0), g[~pos].mean(0)
        v = float(((g[pos] - m1) ** 2).mean())
        u = float(((g[~pos] - m0) ** 2).mean())
        diff = m1 - m0
        gap = float(diff @ diff)
        if gap == 0:
            return grad
        p = n_pos / len(g)
        sol = solve(u, v, d, gap, p, s * gap)
        w = diff / math.sqrt(gap)
        state.last = (w, sol)
        state.kl_before.append(float(sum_kl(u, v, d, gap, 0, 0, 0, 0)))
        state.kl_after.append(sol.sumkl)
        state.nsr.append(sol.power(p, d) / max(float((g * g).sum(1).mean()), 1e-300))
    elif state.last is None:
        return grad
    else:
        w, sol = state.last
        state.single += 1
    z = torch.randn(g.shape, generator=gen, device=gen.device).to(g.device, torch.float64)
    along = (z @ w)[:, None] * w[None, :]
    label = pos.long()
    sd_along = torch.tensor([math.sqrt(sol.neg_along), math.sqrt(sol.pos_along)], dtype=torch.float64,
                            device=g.device)[label][:, None]
    sd_perp = torch.tensor([math.sqrt(sol.neg_perp), math.sqrt(sol.pos_perp)], dtype=torch.float64,
                           device=g.device)[label][:, None]
    noise = sd_along * along + sd_perp * (z - along)
    return grad + noise.view_as(grad).to(grad.dtype)


@register_defense
class Marvell(Defense):
    name = "marvell"
    setups = ("label-only", "u-shaped")
    paper = "Li et al. Label leakage and protection in two-party split learning. ICLR 2022 (Marvell)"
    covers = "the labels in the per-example cut gradient (binary tasks)"

    def __init__(self, s: float = 0.1, **rest: Any) -> None:
        super().__init__(**rest)
        self.s = check_positive_float("s", s, allow_zero=True)
        self._state = _State()

    def params(self) -> dict[str, Any]:
        return {"s": self.s}

    def not_applicable(self, setup: str, num_classes: int) -> str | None:
        why = super().not_applicable(setup, num_classes)
        if why is None and num_classes != 2:
            why = (f"marvell is defined for binary labels; this task has {num_classes} classes "
                   f"(use a binary task, e.g. fashion-mnist-binary)")
        return why

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        self._state = state = _State()
        if self.s == 0:
            return setup  # strength zero: the identity (no noise, no draws)

        def hook(grad: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            return marvell_noise(grad, labels, self.s, gen, state)

        return setup.replace(cut_grad_hooks=setup.cut_grad_hooks + (hook,))

    def report(self) -> dict[str, Any]:
        st = self._state
        out: dict[str, Any] = {"marvell_s": self.s, "marvell_batches": len(st.nsr),
                               "marvell_single_class_batches": st.single}
        if st.nsr:  # medians: a batch with a single positive has an infinite sumKL before the noise
            out |= {"marvell_sumkl_before": float(np.median(st.kl_before)),
                    "marvell_sumkl_after": float(np.median(st.kl_after)),
                    "marvell_noise_to_signal": float(np.median(st.nsr))}
        return out
