"""UnSplit label inference by gradient matching.

Paper: E. Erdogan, A. Küpçü, A. E. Çiçek, "UnSplit: Data-Oblivious Model Inversion, Model Stealing,
and Label Inference Attacks Against Split Learning", WPES 2022, §4.3 and Alg. 2 (Table 3 in
ALGORITHMS.md). Setup: the server holds the inputs and every layer but the last ``label_layers``,
which the label owner keeps with its labels (Fig. 1b, ``label-only``; works in ``u-shaped`` too).

For each observed example (or group) and each candidate label k, the attacker computes the gradient
its *own randomly initialised* copy of the label owner's tail (``view.tail_arch()``) gives for label k
on the activation it sent (``server_out``), and predicts the label whose gradient is closest (MSE) to
the observed one. Two threat models (``threat_model``):

- ``"paper"`` (requires TAIL_GRADIENTS, the paper's stronger assumption): the observed gradient is
  the label owner's parameter gradient, per example (SGD, batch size 1). ``compare`` picks which
  tail parameters are compared: ``"all"`` (Eq. 3: every tail parameter), ``"last"`` (the last
  parametric layer's weight: the authors' code) or ``"first"`` (the first parametric layer's weight).
  The paper's "≈ chance at depth 2" only holds for ``"first"`` (ALGORITHMS.md): the last layer's
  weight gradient (p − e_y)·aᵀ has its only negative row at the true label whatever sits before it.
- ``"realistic"`` (requires CUT_GRADIENT): the observed gradient is what a split-learning server
  really receives, ∂L/∂(server_out), per example; candidates are scaled by 1/batch as the label
  owner's batch-mean loss scales the real one. Expect chance or worse: W_tailᵀ(p − e_y) and the
  random copy's gradients live in unrelated coordinates, and renaming the classes (permuting the
  tail's rows) leaves every cut gradient unchanged, so no method can name the classes from them
  alone. They still *group* the examples by label (benchmarks/unsplit_paper.py scores the
  predictions after the best renaming), which is what Li et al.'s attacks exploit.

Window: ``"before"`` (default) is the paper's setting (the label owner at initialisation, as in the
authors' demo). Once the label owner is trained its predictions are confident, (p − e_y) is small,
the random copy's gradients dominate the distance, and accuracy falls towards chance (measured in
benchmarks/unsplit_paper.py).

Batched label owners (the ``batching`` defense: parameter gradients are means over groups of B
consecutive examples): we predict one label per group — the candidate whose all-k group gradient is
closest — and give it to every member (honest, and exactly the paper's rule at B = 1). The group
size is read off the transcript: the smallest size that cuts every observed batch into as many groups
as it brought tail gradients (a partial last batch of 24 at B = 16 is 16 + 8, not 12 + 12; exact
whenever B divides the full batch).

Scores are negative distances (N×K), so the scorer also reports a multi-class leak AUC.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..records import AttackOutput, Capability
from ..protocol.view import CapabilityError, ServerView
from ..params import check_choice, check_positive_int
from .base import Attack, register_attack

THREAT_MODELS = ("paper", "realistic")
COMPARE = ("all", "last", "first")
WINDOWS = ("before", "after")


def _parametric_layers(tail: nn.Module) -> list[str]:
    """Prefixes of the tail's modules that own parameters directly, in forward order."""
    return [name for name, m in tail.named_modules() if any(True for _ in m.parameters(recurse=False))]


def compared_names(tail: nn.Module, compare: str) -> list[str]:
    names = [n for n, _ in tail.named_parameters()]
    if compare == "all":
        return names
    layers = _parametric_layers(tail)
    prefix = layers[-1] if compare == "last" else layers[0]
    weight = f"{prefix}.weight" if prefix else "weight"
    return [weight] if weight in names else [n for n in names if n.startswith(prefix)]


def candidate_param_grads(tail: nn.Module, h: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Tail parameter gradients of mean CE(tail(h_group), k) for groups h (M×G×…) and every k: M×K×shape."""
    params = {k: v.detach() for k, v in tail.named_parameters()}

    def loss(p: dict[str, torch.Tensor], hg: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        out = functional_call(tail, p, (hg,))
        return F.cross_entropy(out, k.expand(hg.shape[0]))

    per_k = vmap(grad(loss), in_dims=(None, None, 0))
    cands = torch.arange(num_classes, device=h.device)
    return vmap(per_k, in_dims=(None, 0, None))(params, h, cands)


def candidate_cut_grads(tail: nn.Module, h: torch.Tensor, num_classes: int, batch: int) -> torch.Tensor:
    """∂[CE(tail(h_i), k)/batch]/∂h_i for every example and candidate: N×K×(h's shape)."""
    params = {k: v.detach() for k, v in tail.named_parameters()}

    def loss(hi: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(tail, params, (hi[None],)), k[None]) / batch

    cands = torch.arange(num_classes, device=h.device)
    return vmap(vmap(grad(loss), in_dims=(None, 0)), in_dims=(0, None))(h, cands)


@register_attack
class UnSplitLabel(Attack):
    name = "unsplit-label"
    kind = "label"
    requires = frozenset({Capability.TAIL_GRADIENTS, Capability.SERVER_OUT})  # threat_model="paper"; set per instance
    default_setup = "label-only"
    paper = "UnSplit (Erdogan et al. 2022) Alg. 2: label inference by gradient matching"

    def __init__(self, threat_model: str = "paper", compare: str = "all", window: str = "before",
                 max_targets: int | None = None, **rest: Any) -> None:
        super().__init__(**rest)
        self.threat_model = check_choice("threat_model", threat_model, THREAT_MODELS)
        self.compare = check_choice("compare", compare, COMPARE)
        self.window = check_choice("window", window, WINDOWS)
        self.max_targets = None if max_targets is None else check_positive_int("max_targets", max_targets)
        self.requires = frozenset({Capability.TAIL_GRADIENTS if threat_model == "paper" else Capability.CUT_GRADIENT,
                                   Capability.SERVER_OUT})

    def params(self) -> dict[str, Any]:
        return {"threat_model": self.threat_model, "compare": self.compare, "window": self.window,
                "max_targets": self.max_targets}

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        for cap in self.requires:
            view.require(cap)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the attacker's own random tail, from the cell's seed
            tail = view.tail_arch()
        if not any(True for _ in tail.parameters()):
            raise CapabilityError(f"setup {view.setup!r} has no label-owner tail with parameters to attack")
        tail = tail.to(view.device).train()
        obs = [o for o in view.observations(self.window) if o.server_out is not None]
        if not obs:
            raise CapabilityError(f"no server_out observed in window {self.window!r} of setup {view.setup!r}")
        ids, scores = [], []
        known = (view.defense.params_of("batching") or {}).get("b")  # public (Kerckhoffs), when it fits
        size = _group_size(obs, known) if self.threat_model == "paper" else 1
        for o in obs:
            h = o.server_out.to(view.device).float()
            if self.threat_model == "paper":
                s = self._paper_scores(tail, h, o.tail_grads, view, size)
            else:
                if o.cut_grad is None:
                    raise CapabilityError("no cut gradient observed: the view does not grant it")
                s = self._realistic_scores(tail, h, o.cut_grad.to(view.device).float(), view)
            ids.append(o.ids)
            scores.append(s.cpu())
        ids_t, scores_t = torch.cat(ids), torch.cat(scores)
        if self.max_targets is not None:
            ids_t, scores_t = ids_t[: self.max_targets], scores_t[: self.max_targets]
        return AttackOutput(ids=ids_t, labels=scores_t.argmax(1), label_scores=scores_t)

    def _paper_scores(self, tail: nn.Module, h: torch.Tensor, groups: list[dict[str, torch.Tensor]] | None,
                      view: ServerView, g: int) -> torch.Tensor:
        if not groups:
            raise CapabilityError("no tail parameter gradients observed: the view does not grant them")
        n, m = len(h), len(groups)
        names = compared_names(tail, self.compare)
        count = sum(groups[0][k].numel() for k in names)
        out = torch.empty(m, view.num_classes, device=h.device)
        full = n // g  # groups of exactly g examples: one vectorised call
        spans = [(0, full)] + ([(full, m)] if full < m else [])
        for a, b in spans:
            hg = h[a * g: min(b * g, n)]
            hg = hg.reshape(b - a, -1, *h.shape[1:])
            cand = candidate_param_grads(tail, hg, view.num_classes)
            d = torch.zeros(b - a, view.num_classes, device=h.device)
            for k in names:
                seen = torch.stack([groups[j][k] for j in range(a, b)]).to(h.device)
                diff = cand[k] - seen[:, None]
                d += diff.pow(2).flatten(2).sum(2)
            out[a:b] = -d / count
        return out.repeat_interleave(g, dim=0)[:n]

    def _realistic_scores(self, tail: nn.Module, h: torch.Tensor, cut: torch.Tensor,
                          view: ServerView) -> torch.Tensor:
        cand = candidate_cut_grads(tail, h, view.num_classes, batch=len(h))
        return -(cand - cut[:, None]).pow(2).flatten(2).mean(2)


def _group_size(obs, known: int | None = None) -> int:
    """The label owner's group size: batching's public b (``known``) when the transcript allows it, else the
    smallest size that cuts every observed batch of n examples into as many groups as it brought tail
    gradients (ceil(n / size) = groups)."""
    seen = [(len(o.server_out), len(o.tail_grads)) for o in obs if o.tail_grads]
    if not seen:
        raise CapabilityError("no tail parameter gradients observed: the view does not grant them")
    fits = [g for g in range(1, max(n for n, _ in seen) + 1) if all(math.ceil(n / g) == m for n, m in seen)]
    if not fits:
        raise ValueError("unsplit-label: no group size cuts every observed batch into its number of tail gradients")
    return known if known in fits else fits[0]
