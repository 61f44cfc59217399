"""Clustering label inference: the examples of one class send similar messages.

Paper: J. Liu, L. Lyu, "Similarity-based Label Inference Attack against Training and Inference of
Split Learning" (arXiv 2203.05222; IEEE TIFS 2024), as SecretFlow's benchmark implements it
(secretflow sim_lia, read, not copied): rows L2-normalised, k-means with k = classes seeded by one
known example per class, clusters named by Hungarian matching on the known examples.

Threat model (honest-but-curious server, ``u-shaped`` setup; ``label-only`` works with the gradients
and the server's outputs): the server clusters what it observed in one transcript window and knows the
labels of ``known_per_class`` observed examples per class (KNOWN_LABELS, default 1: Liu & Lyu's and
SecretFlow's one known sample per class). What it clusters is ``source``:

- ``"cut_grad"`` (default; requires CUT_GRADIENT): the per-example gradient the label owner returns
  (× its batch size, as `label_leak.cut_gradients`), Liu & Lyu's main attack;
- ``"smashed"`` (requires SMASHED): the client's activations at the cut, Liu & Lyu's attack on
  smashed data;
- ``"server_out"`` (requires SERVER_OUT): the server part's own outputs, the features the label
  owner's layers classify.

``requires`` is set per instance from ``source`` (the runner reads the instance's), so a defense that
removes CUT_GRADIENT blocks the gradient variant only. ``metric``: ``"cosine"`` (rows L2-normalised,
then Euclidean k-means: spherical clustering) or ``"euclidean"`` (raw rows); ``"auto"`` is Liu & Lyu's
choice per source: cosine for gradients, Euclidean for activations. ``sign = "abs"``: each row is
first flipped so that its largest-magnitude coordinate is positive, so a row and its negative are one
point: the attacker who knows `max-norm` (its scalar N(0,1) factor flips whole rows' signs; the
direction up to sign is what it keeps). Default ``"signed"``.

k-means (Lloyd, at most ``iterations`` rounds, until no assignment changes; an emptied cluster keeps
its centre) starts from one centre per class that has a known example: the mean of that class's known
rows, so k = the classes present among the known examples (every class, once each is observed in the
window). Each cluster is then named by Hungarian matching (scipy's ``linear_sum_assignment``) of the
known examples' classes against the clusters they fall in: names come from the known labels only,
never from the truth. The known examples are clustered with the rest and left out of the output.

Output: ``labels`` (the clusters' names), ``clusters`` (the raw cluster index of each target: the
scorer's ``label_ari``, the adjusted Rand index with the true labels, needs no naming, so it measures
the clustering alone) and ``label_scores`` (N×K: minus the squared distance to the centre named each
class; classes that name no cluster score below every other). Deterministic: no random draws.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..params import check_choice, check_positive_int
from ..protocol.view import ServerView
from ..records import AttackOutput, Capability
from .base import Attack, register_attack
from .label_leak import SIGNS, WINDOWS, cut_gradients, known_examples

SOURCES = {"cut_grad": Capability.CUT_GRADIENT, "smashed": Capability.SMASHED,
           "server_out": Capability.SERVER_OUT}
METRICS = ("auto", "cosine", "euclidean")


def kmeans(x: torch.Tensor, centres: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from the given centres: (assignment of each row, final centres)."""
    c = centres.clone()
    assign = torch.cdist(x, c).argmin(1)
    for _ in range(iterations):
        for j in range(len(c)):
            members = assign == j
            if bool(members.any()):  # an emptied cluster keeps its centre
                c[j] = x[members].mean(0)
        new = torch.cdist(x, c).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign, c


def name_clusters(cluster_of_known: torch.Tensor, known_y: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Cluster j -> class: Hungarian matching maximising how many known examples land in the cluster
    named after their own class (cluster j is seeded from ``classes[j]``)."""
    from scipy.optimize import linear_sum_assignment

    k = len(classes)
    hits = torch.zeros(k, k, dtype=torch.long)  # [class index, cluster]
    row = {int(c): i for i, c in enumerate(classes.tolist())}
    for cl, y in zip(cluster_of_known.tolist(), known_y.tolist()):
        hits[row[int(y)], cl] += 1
    r, col = linear_sum_assignment(hits.numpy(), maximize=True)
    names = torch.empty(k, dtype=torch.long)
    names[torch.as_tensor(col)] = classes[torch.as_tensor(r)]
    return names


@register_attack
class ClusterLabel(Attack):
    name = "cluster-label"
    kind = "label"
    requires = frozenset({Capability.CUT_GRADIENT, Capability.KNOWN_LABELS})  # source="cut_grad"; set per instance
    default_setup = "u-shaped"
    paper = "Liu & Lyu. Similarity-based Label Inference Attack against Training and Inference of Split Learning"

    def __init__(self, source: str = "cut_grad", metric: str = "auto", known_per_class: int = 1,
                 iterations: int = 100, window: str = "after", sign: str = "signed", **rest: Any) -> None:
        super().__init__(**rest)
        self.sign = check_choice("sign", sign, SIGNS)
        self.source = check_choice("source", source, tuple(SOURCES))
        self.metric = check_choice("metric", metric, METRICS)
        self.known_per_class = check_positive_int("known_per_class", known_per_class)  # read by the view builder
        self.iterations = check_positive_int("iterations", iterations)
        self.window = check_choice("window", window, WINDOWS)
        self.requires = frozenset({SOURCES[self.source], Capability.KNOWN_LABELS})

    def params(self) -> dict[str, Any]:
        out = {"source": self.source, "metric": self.metric, "known_per_class": self.known_per_class,
               "iterations": self.iterations, "window": self.window}
        return out | ({"sign": self.sign} if self.sign != "signed" else {})  # older cells keep their keys

    def distance(self) -> str:
        if self.metric != "auto":
            return self.metric
        return "cosine" if self.source == "cut_grad" else "euclidean"

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        if self.source == "cut_grad":
            ids, x = cut_gradients(view, self.window)
        else:
            ids, x = view.stacked(self.source, self.window)
            x = x.flatten(1).double()
        if self.distance() == "cosine":
            x = F.normalize(x, dim=1)
        if self.sign == "abs":  # each row's largest-magnitude coordinate made positive: a row and its negative
            big = x.abs().argmax(1, keepdim=True)  # are one point (max-norm flips whole rows' signs)
            x = x * torch.where(x.gather(1, big) < 0, -1.0, 1.0).to(x.dtype)
        pos, known_y = known_examples(view, self.window, ids, self.known_per_class, self.name)
        classes = torch.unique(known_y)
        if len(classes) < 2:
            raise RuntimeError(f"cluster-label needs known examples of two classes or more; got {len(classes)}")
        seeds = torch.stack([x[pos[known_y == c]].mean(0) for c in classes])
        assign, centres = kmeans(x, seeds, self.iterations)
        names = name_clusters(assign[pos], known_y, classes)
        d2 = torch.cdist(x, centres) ** 2
        scores = torch.full((len(x), view.num_classes), float("nan"), dtype=x.dtype)
        scores[:, names] = -d2
        scores = torch.nan_to_num(scores, nan=float(-d2.max()) - 1.0)  # a class naming no cluster: last
        keep = torch.ones(len(ids), dtype=torch.bool)
        keep[pos] = False
        return AttackOutput(ids=ids[keep], labels=names[assign[keep]], label_scores=scores[keep].float(),
                            clusters=assign[keep], extra={"n_known": float(len(pos)), "n_clusters": float(len(classes))})
