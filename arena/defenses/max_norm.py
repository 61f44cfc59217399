"""`max-norm`: the label owner gives every returned cut gradient the batch's largest expected norm.

Paper: O. Li, J. Sun, X. Yang, W. Gao, H. Zhang, J. Xie, V. Smith, C. Wang, "Label leakage and
protection in two-party split learning", ICLR 2022 — the heuristic defense ("max norm") beside
Marvell; authors' code: OscarcarLi/label-protection (``gradient_masking``). It targets the norm
attack (`norm-label`): in an imbalanced binary task the rare class gets the larger gradients.

Mechanism, per batch, inside the label owner before the gradient leaves it (a cut-gradient hook):
``g_max = max_j ‖g_j‖`` and each example's gradient becomes ``g_j·(1 + s·σ_j·ξ_j)`` with one
*scalar* ``ξ_j ~ N(0, 1)`` per example (from the hook's generator, the cell's defense stream) and
``σ_j = √max(g_max²/‖g_j‖² − 1, 0)``. At ``s = 1`` (the paper's defense) every expected squared
norm equals the batch's largest: ``E‖g̃_j‖² = ‖g_j‖²(1 + σ_j²) = g_max²``; in general
``E‖g̃_j‖² = ‖g_j‖² + s²(g_max² − ‖g_j‖²)``. The largest-norm example is returned unchanged
(σ = 0) and every direction is kept up to its sign (the factor is a scalar, negative when ξ_j <
−1/(sσ_j)). A row that is exactly zero stays zero (there is nothing to scale). The noisy gradient
is what the server backpropagates and what the client trains on, so the cost is in the accuracy.

Scale: the label owner's loss is the batch mean, so each returned row is the example's own
gradient times 1/batch. max-norm only compares norms within one batch (σ_j is a ratio), so that
common factor changes nothing: the defense is scale-invariant.

What the server still sees: the (noisy) per-example cut gradient of every step (``removes`` is
empty; CUT_GRADIENT is still granted) and everything else of its setup. What it protects: the
norm as a label signal, in expectation; a single draw still varies, and the norm attack's AUC is
what the matrix measures (tiny digits, 0 vs rest: `norm-label` AUC 1.00 → 0.61–0.70).

It does not hide directions, only their signs, and only for rows below the largest: a row flips
when ξ_j < −1/(sσ_j) (never the largest row; probability near ½ for rows far below g_max).
`cosine-label` scores *signed* cosines against known examples' gradients, so a flipped row looks
like another class and the signed attack loses accuracy (Fashion-MNIST 10 classes, u-shaped LeNet,
10k examples, seed 0: label acc 1.00 → 0.53, AUC 1.00 → 0.55). That is not protection: an
attacker who knows the defense scores |cos| and gets 0.78 back (AUC 0.98; |cos| undefended: 0.84,
0.98). With a one-layer tail under softmax cross-entropy a binary task's two classes have exactly
opposite gradient directions (W^T(p − e_y)), so there |cos| carries nothing and the sign is the
whole signal: there the flips do cost the direction attack (tiny digits: AUC 1.00 → 0.78).

Test time: nothing — gradients exist only in training; inference is unchanged.

Strength: ``strength`` s ∈ [0, 1] (default 1, the paper's heuristic) multiplies every σ_j. The
paper has no strength knob; this one interpolates from the undefended protocol to the paper's
defense. ``strength = 0`` is the identity: the setup is returned unchanged and no random numbers
are drawn, so it reproduces `none` bit for bit (tested).

Setups: label-only and u-shaped (there is a label owner returning gradients). In vanilla the
server holds the labels: not applicable.
"""
from __future__ import annotations

from typing import Any

import torch

from ..params import check_float_in
from ..protocol.train import SplitSetup
from .base import Defense, register_defense


def max_norm_factors(norms: torch.Tensor, strength: float, xi: torch.Tensor) -> torch.Tensor:
    """Per-row scalar factors ``1 + s·σ_j·ξ_j`` for rows of the given norms (zero rows: factor 1), in
    float64: a confident example's gradient can be 1e-30 of the largest, and g_max²/‖g‖² then
    overflows float32 (an infinite factor, a non-finite gradient)."""
    norms, xi = norms.double(), xi.double()
    g_max = norms.max()
    ratio = torch.where(norms > 0, g_max.square() / norms.square().clamp_min(torch.finfo(norms.dtype).tiny),
                        torch.ones_like(norms))
    sigma = (ratio - 1).clamp_min(0).sqrt()
    return 1 + strength * sigma * xi


@register_defense
class MaxNorm(Defense):
    name = "max-norm"
    setups = ("label-only", "u-shaped")
    paper = "Li et al. 2022 (ICLR), Label leakage and protection in two-party split learning: max-norm heuristic"
    covers = "the per-example cut gradient's norm, in expectation (labels); not its direction"

    def __init__(self, strength: float = 1.0, **rest: Any) -> None:
        super().__init__(**rest)
        self.strength = check_float_in("strength", strength, 0.0, 1.0)

    def params(self) -> dict[str, Any]:
        return {"strength": self.strength}

    def hook(self, g: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The cut-gradient hook: one scalar N(0, 1) draw per example, every row rescaled by its factor."""
        xi = torch.randn(len(g), generator=gen, device=gen.device).to(g.device)
        factors = max_norm_factors(g.flatten(1).double().norm(dim=1), self.strength, xi)
        return (g.double() * factors.view(-1, *([1] * (g.dim() - 1)))).to(g.dtype)

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        if self.strength == 0:
            return setup  # strength zero: the identity (no draws)
        return setup.replace(cut_grad_hooks=setup.cut_grad_hooks + (self.hook,))

    def report(self) -> dict[str, Any]:
        return {"max_norm_strength": self.strength}
