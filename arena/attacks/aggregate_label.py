"""Label recovery from group-averaged last-layer gradients: the adaptive attack on `batching` (+ `max-norm`).

Papers: A. Wainakh, F. Ventola, T. Müßig, J. Keim, C. Garcia Cordero, E. Zimmer, T. Grube, K. Kersting,
M. Mühlhäuser, "User-Level Label Leakage from Gradients in Federated Learning" (LLG), PETS 2022; T. Dang,
O. Thakkar, S. Ramaswamy, R. Mathews, P. Chin, F. Beaufays, "Revealing and Protecting Labels in
Distributed Training" (RLG), NeurIPS 2021. Both read a batch's labels off the *averaged* gradient of
the last layer. The per-example form below (the server knows each example's input to that layer) is
new here; the reasoning follows.

Target defense (``adapts_to``): `batching`, alone or in the stack `batching+max-norm`. Neither
defense's public parameter is needed (batching's b only breaks a tie): the group size is read off the
transcript (below), and the
max-norm noise touches only the cut gradient, which the default path never reads (the ``cut_grad``
fallback compares directions up to sign, max-norm's flips).

Threat model (honest-but-curious server; ``u-shaped``, also ``label-only``): the server sees, per
recorded step, the label owner's tail parameter gradients averaged over groups of b consecutive
examples (TAIL_GRADIENTS, UnSplit's stronger threat model, which `batching` leaves granted) and its
own output h_i for every example (SERVER_OUT: it computed it); with ``fallback = "cut_grad"`` also
the per-example, max-norm-noised cut gradient (CUT_GRADIENT). It knows no label and no weight of the
label owner.

The algebra. The tail's last layer is ``z = W x + c`` with softmax cross-entropy; for one group
``dW = (1/b) Σ_i e_i x_iᵀ`` and ``dc = (1/b) Σ_i e_i`` with ``e_i = p_i − onehot(y_i)``. When the
layers in front of that Linear have no parameters (label_layers = 1: x_i = h_i; label_layers = 2 in
LeNet: x_i = ReLU(h_i)) the server computes every x_i itself, so with A the b×(d+1) matrix of rows
[x_i, 1] the system ``Aᵀ E = b [dW, dc]ᵀ`` is linear in the b×K matrix E of per-example errors. When A
has full row rank (b ≤ d + 1 and independent x_i) least squares returns every e_i exactly up to
float32 rounding, and ``y_i`` is the index of e_i's only negative entry (RLG's observation that the
last layer's gradient is negative exactly at the labels present, made per example by the known x_i).
Counts per group follow (LLG's quantity, here exact). An example is *resolved* when its most negative
entry lies below −``z``·se (se: the least-squares standard error from the residual, i.e. the rounding
noise; dof = d + 1 − b) and is at least ``z`` times any other negative entry. A very confident example
(1 − p_y below the rounding noise) stays unresolved. In a rank-deficient group (b > rank A) the
minimum-norm solution is not exact; its rows that pass the dominance test alone are taken (tiny
digits, b = 128 > d + 1 = 85: 164 of 344 rows pass, all right) and the rest are unresolved.

Group size: `batching` cuts each batch into consecutive groups of b, the last one shorter. The
attack takes the sizes that give every observed batch its number of tail gradients (ceil(n/b) =
groups); among several, batching's public b when the view's defense knowledge names it and it is
one of them, else the one whose groups' systems are most consistent (a wrong cut mixes two groups'
examples and leaves a residual far above the rounding). ``n/groups`` is wrong for a partial
last batch (24 examples, b = 16: groups of 16 and 8, not 12 and 12).

Fallback for unresolved examples (``fallback``): ``"logits"`` (default; no further capability): a
softmax layer on x fitted to the resolved examples' recovered predictions p_i = e_i + onehot(y_i);
the label owner's own last layer is one minimiser, and an unresolved example is one that layer is
confident about, so its argmax is its label. ``"cut_grad"`` (requires CUT_GRADIENT): per class, the
top singular vector of the resolved examples' unit cut gradients (sign-free, so max-norm's flips do
not matter); the class of the largest |cosine|. ``"argmin"``: e_i's smallest entry as it is. Both
learned fallbacks use only labels this attack recovered itself, never known labels, and need
resolved examples of two classes or more (else ``argmin``).

Refusal: a tail whose last Linear has a parametric or random layer in front of it (mid's bottleneck,
label_layers ≥ 3 in LeNet) gives inputs x_i the server cannot compute: ``run`` raises
`AttackNotApplicable` saying so (the cell is n/a with that reason, never credited to the defense),
rather than guessing.

Output: ``labels`` per observed example of the window (ids as the view gave them), ``label_scores``
(resolved rows: +2 at the label, −2 elsewhere; others in [−1, 1]: the fallback's probabilities or
|cosines|, or −e_i scaled), and the recovered counts per group (``group_counts`` G×K with ``groups``,
each output row's group), which the scorer turns into ``count_exact`` and ``count_l1``. ``extra``:
``resolved_frac``, ``group_size``, ``rank_deficient_groups``. Deterministic: no random draws.
Window: ``"after"`` (default) or ``"before"``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..params import check_choice, check_positive_float
from ..protocol.view import ServerView
from ..records import AttackNotApplicable, AttackOutput, Capability
from .base import Attack, register_attack
from .label_leak import WINDOWS

FALLBACKS = ("logits", "cut_grad", "argmin")


def last_linear(tail: nn.Sequential) -> tuple[str, nn.Sequential]:
    """(parameter prefix of the tail's last Linear, the parameter-free layers in front of it).
    Raises AttackNotApplicable when the server cannot compute that layer's input from its own output."""
    layers = list(tail)
    idx = [k for k, m in enumerate(layers) if isinstance(m, nn.Linear)]
    if not idx:
        raise ValueError("grad-label-count: the label owner's tail has no Linear layer to read labels from")
    k = idx[-1]
    if k != len(layers) - 1:
        raise ValueError("grad-label-count: the tail's last Linear must be its output layer")
    front = layers[:k]
    bad = [type(m).__name__ for m in front
           if any(True for _ in m.parameters()) or hasattr(m, "noise_generator")]
    if bad:
        raise AttackNotApplicable(
            f"grad-label-count: the layers in front of the tail's last Linear ({', '.join(bad)}) have parameters or "
            "draw noise, so the server cannot compute that layer's inputs; this attack needs label_layers whose "
            "front is parameter-free")
    return str(k), nn.Sequential(*front)


def group_size(xs: list[torch.Tensor], mats: list[list[tuple[torch.Tensor, torch.Tensor | None]]],
               known: int | None = None) -> int:
    """The label owner's group size b, from the transcript alone: the sizes that cut every observed
    batch into as many groups as it has tail gradients (ceil(n / b) = groups), and among several the one
    whose groups' least-squares systems are most consistent (the smallest relative residual; a wrong
    cut mixes examples of two groups and leaves a residual far above the rounding). ``known``: the
    defense's public b, taken when it is one of the sizes the transcript allows."""
    cands = [b for b in range(1, max(len(x) for x in xs) + 1)
             if all(-(-len(x) // b) == len(m) for x, m in zip(xs, mats))]
    if not cands:
        raise ValueError("grad-label-count: no group size cuts every observed batch into its number of tail gradients")
    if len(cands) == 1:
        return cands[0]
    if known in cands:  # batching's public b (Kerckhoffs), when the transcript allows it
        return known

    def misfit(b: int) -> float:
        total = 0.0
        for x, m in zip(xs, mats):
            for j, (dw, dc) in enumerate(m):
                a, rhs = _system(x[j * b:(j + 1) * b], dw, dc)
                e = torch.linalg.lstsq(a.T, rhs, driver="gelsd").solution
                total += float((a.T @ e - rhs).norm() / rhs.norm().clamp_min(1e-300))
        return total

    return min(cands, key=lambda b: (misfit(b), b))


def _system(x: torch.Tensor, dw: torch.Tensor, dc: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, rhs) of one group: rows [x_i, 1] and b·[dW, dc]ᵀ, so that Aᵀ E = rhs."""
    b = len(x)
    a = torch.cat([x, torch.ones(b, 1, dtype=x.dtype)], 1) if dc is not None else x
    return a, b * (torch.cat([dw, dc[:, None]], 1) if dc is not None else dw).T


def solve_group(x: torch.Tensor, dw: torch.Tensor, dc: torch.Tensor | None, z: float
                ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Per-example errors E (b×K) from one group's mean gradients; (E, resolved mask, full rank?)."""
    b = len(x)
    a, rhs = _system(x, dw, dc)
    rank = int(torch.linalg.matrix_rank(a))
    e = torch.linalg.lstsq(a.T, rhs, driver="gelsd").solution  # b×K
    dof = a.shape[1] - b
    if rank == b and dof > 0:
        sigma = ((a.T @ e - rhs).square().sum(0) / dof).sqrt()  # per class: the rounding noise
        se = torch.linalg.inv(a @ a.T).diagonal().clamp_min(0).sqrt()[:, None] * sigma[None, :]
    else:  # b = d + 1 (no residual to measure the noise) or rank-deficient (min-norm, not exact): dominance only
        se = torch.zeros_like(e)
    two = e.topk(2, dim=1, largest=False)
    low_se = se.gather(1, two.indices[:, :1]).squeeze(1)
    # the most negative entry is clearly below zero, and the next one is only noise beside it
    resolved = (two.values[:, 0] < -z * low_se) & (two.values[:, 1] > two.values[:, 0] / z)
    return e, resolved, rank == b


@register_attack
class GradLabelCount(Attack):
    name = "grad-label-count"
    kind = "label"
    # the default fallback's; ``fallback = "cut_grad"`` adds CUT_GRADIENT per instance (the runner reads the instance's)
    requires = frozenset({Capability.TAIL_GRADIENTS, Capability.SERVER_OUT})
    default_setup = "u-shaped"
    adapts_to = ("batching",)  # max-norm only touches the cut gradient, which the default path never reads
    paper = ("LLG (Wainakh et al., PETS 2022) and RLG (Dang et al., NeurIPS 2021): labels from averaged "
             "last-layer gradients; per-example least squares with the server's own outputs new here")

    def __init__(self, window: str = "after", fallback: str = "logits", z: float = 4.0, **rest: Any) -> None:
        super().__init__(**rest)
        self.window = check_choice("window", window, WINDOWS)
        self.fallback = check_choice("fallback", fallback, FALLBACKS)
        self.z = check_positive_float("z", z)
        base = {Capability.TAIL_GRADIENTS, Capability.SERVER_OUT}
        self.requires = frozenset(base | ({Capability.CUT_GRADIENT} if fallback == "cut_grad" else set()))

    def params(self) -> dict[str, Any]:
        return {"window": self.window, "fallback": self.fallback, "z": self.z}

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        k, front = last_linear(view.tail_arch())
        view.require(Capability.TAIL_GRADIENTS)
        view.require(Capability.SERVER_OUT)
        obs = [o for o in view.observations(self.window) if o.tail_grads and o.server_out is not None]
        if not obs:
            raise ValueError(f"grad-label-count: no tail gradients observed in window {self.window!r}")
        with torch.no_grad():
            xs = [front(o.server_out.float()).flatten(1).double() for o in obs]
        mats = [[(tg[f"{k}.weight"].double(), None if tg.get(f"{k}.bias") is None else tg[f"{k}.bias"].double())
                 for tg in o.tail_grads] for o in obs]
        public = view.defense.params_of("batching")
        b = group_size(xs, mats, public.get("b") if public else None)
        ids, errors, resolved, groups, grads, deficient = [], [], [], [], [], 0
        for o, x, ms in zip(obs, xs, mats):
            for j, (dw, dc) in enumerate(ms):
                rows = slice(j * b, (j + 1) * b)
                e, ok, full = solve_group(x[rows], dw, dc, self.z)
                deficient += not full
                ids.append(o.ids[rows])
                errors.append(e)
                resolved.append(ok)
                groups.append(torch.full((len(e),), len(groups), dtype=torch.long))
            if self.fallback == "cut_grad":
                view.require(Capability.CUT_GRADIENT)
                grads.append(o.cut_grad.flatten(1).double())
        e, ok = torch.cat(errors), torch.cat(resolved)
        labels, nk = e.argmin(1), view.num_classes
        # resolved rows: certain (+2 at the label, -2 elsewhere); the rest: -e scaled into [-1, 1]
        scores = torch.where(F.one_hot(labels, nk).bool(), 2.0, -2.0).double()
        scores[~ok] = -e[~ok] / e[~ok].abs().amax(1, keepdim=True).clamp_min(1e-300)
        learned = len(torch.unique(labels[ok])) >= 2  # the fallbacks learn from two resolved classes or more
        if self.fallback == "logits" and learned and bool((~ok).any()):
            logits = fit_last_layer(torch.cat(xs), e, labels, ok, nk)
            labels = torch.where(ok, labels, logits.argmax(1))
            scores[~ok] = logits.softmax(1)[~ok]
        if self.fallback == "cut_grad" and learned and bool((~ok).any()):
            cos = direction_scores(F.normalize(torch.cat(grads), dim=1), labels, ok, nk)
            labels = torch.where(ok, labels, cos.argmax(1))
            scores[~ok] = cos[~ok]
        group = torch.cat(groups)
        counts = torch.zeros(len(groups), nk, dtype=torch.long).index_put_(
            (group, labels), torch.ones(len(labels), dtype=torch.long), accumulate=True)
        return AttackOutput(ids=torch.cat(ids), labels=labels, label_scores=scores.float(),
                            group_counts=counts, groups=group,
                            extra={"resolved_frac": float(ok.double().mean()), "group_size": float(b),
                                   "rank_deficient_groups": float(deficient)})


def direction_scores(unit: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor, nk: int) -> torch.Tensor:
    """N×K |cosines| of unit cut gradients with each class's reference: the top right singular vector of
    the resolved examples of that class (sign-free). Classes with no resolved example score −1."""
    out = torch.full((len(unit), nk), -1.0, dtype=unit.dtype)
    for c in range(nk):
        mine = unit[ok & (labels == c)]
        if len(mine):
            ref = torch.linalg.svd(mine, full_matrices=False).Vh[0]
            out[:, c] = (unit @ ref).abs()
    return out


def fit_last_layer(x: torch.Tensor, e: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor, nk: int,
                   steps: int = 200) -> torch.Tensor:
    """N×K logits of a softmax layer fitted to the resolved examples' recovered predictions
    p_i = e_i + onehot(y_i) (soft cross-entropy, a little L2): the label owner's own last layer is
    one minimiser. Unresolved examples are the ones it is confident about, so their argmax is their label."""
    p = (e[ok] + F.one_hot(labels[ok], nk).to(e.dtype)).clamp(0, 1)
    p = p / p.sum(1, keepdim=True).clamp_min(1e-12)
    mu, sd = x[ok].mean(0), x[ok].std(0).clamp_min(1e-6)
    xn = (x - mu) / sd
    w = torch.zeros(x.shape[1], nk, dtype=x.dtype, requires_grad=True)
    c = torch.zeros(nk, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, c], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = -(p * F.log_softmax(xn[ok] @ w + c, 1)).sum(1).mean() + 1e-4 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return xn @ w + c
