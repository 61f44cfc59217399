"""`nopeek`: the client also minimises the distance correlation between its inputs and activations.

Paper: Vepakomma, Singh, Gupta & Raskar, "NoPeek: Information leakage reduction to share
activations in distributed deep learning" (ICDMW 2020). The client's loss becomes
``CE + α·dCor(X, A)`` over each batch, where dCor is Székely, Rizzo & Bakirov's (2007) sample
distance correlation between the flattened inputs X and the activations A it sends (0:
independent, 1: one determines the other up to an isometry and scaling).

What the server still sees: the smashed data of every example (decorrelated from the inputs by
training, not hidden), the labels in the vanilla setup, the cut gradients — ``removes`` is empty.
The extra cost is client compute: two B×B distance matrices per step. Pasquini et al. (FSHA)
report that it bites only at weights that hurt accuracy; the sweep measures the trade-off.

Composition: the term is added to the client's loss (`SplitSetup.client_loss_terms`); it sees the
activation after any smash hooks (e.g. `noise`), i.e. what is actually sent. It couples the
examples of a batch, so under `dp-sgd` the per-example sensitivity (and the reported ε) no longer
holds.

Setups: vanilla and u-shaped. In label-only the server owns the inputs and front layers, so
there is no client activation to act on: a clear error, not a silent no-op.

Strength zero: α = 0 adds no term at all (not 0·dCor, whose gradient could be NaN), so it
reproduces `none` bit for bit.
"""
from __future__ import annotations

from typing import Any

import torch

from ..params import check_positive_float
from ..protocol.train import SplitSetup
from .base import Defense, register_defense
from .noise import require_client_activations


def _centred_distances(z: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(z, z)
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Sample distance correlation dCor(X, Y) ∈ [0, 1] of two batches (rows = examples), differentiable."""
    if len(x) != len(y):
        raise ValueError(f"dCor needs as many rows in both: {len(x)} vs {len(y)}")
    if len(x) < 2:
        raise ValueError("dCor needs at least 2 examples")
    dt = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    a, b = _centred_distances(x.flatten(1).to(dt)), _centred_distances(y.flatten(1).to(dt))
    dcov2 = (a * b).mean()
    denom = ((a * a).mean() * (b * b).mean()).sqrt()
    return (dcov2.clamp_min(0) / denom.clamp_min(eps)).clamp_min(eps).sqrt()


@register_defense
class NoPeek(Defense):
    name = "nopeek"
    label_owner_neutral = True  # acts on the client front only: one run serves vanilla and u-shaped
    setups = ("vanilla", "u-shaped")
    covers = "the activations' dependence on the inputs (distance correlation, trained down)"
    paper = "Vepakomma et al. 2020, NoPeek (distance correlation)"

    def __init__(self, alpha: float = 0.5, **rest: Any) -> None:
        super().__init__(**rest)
        self.alpha = check_positive_float("alpha", alpha, allow_zero=True)
        self._after: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def term(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if len(x) < 2:  # a one-example batch has no distance structure
            return a.sum() * 0
        return self.alpha * distance_correlation(x, a)

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        self._after = {}
        if self.alpha == 0:
            return setup
        require_client_activations(setup, self.name)
        return setup.replace(client_loss_terms=setup.client_loss_terms + (self.term,))

    def report(self) -> dict[str, Any]:
        return {"alpha": self.alpha} | self._after

    def after_training(self, result: Any) -> None:
        """dCor between the inputs and what the server received, in the last recorded window."""
        obs = [o for o in result.transcript.observations("after") if o.smashed is not None and o.ids is not None]
        if not obs:
            return
        ids = torch.cat([o.ids for o in obs])
        smashed = torch.cat([o.smashed for o in obs])
        if len(ids) >= 2:
            with torch.no_grad():
                self._after = {"dcor_sent": float(distance_correlation(result.truth.inputs(ids), smashed))}
