"""The only consumer of ground truth: compares an AttackOutput with the truth and scores it.

Metric names are shared by every attack of a kind: ``mse``/``psnr``/``ssim`` for reconstructions
(data range 1.0, reconstructions clamped to [0,1]), ``clone_acc`` for stolen client parts,
``label_acc`` (with ``label_chance``) and ``leak_auc`` for labels; ``mse@<step>`` for a curve of
reconstructions taken during training (``extra["curve"] = [(step, ids, reconstructions), ...]``).

Labels: ``label_chance`` is the majority-class share of the scored targets (the accuracy of always
guessing their most common label: the baseline ``label_acc`` must beat), ``n_labels`` the number of
scored targets and, when the attack answered a one-vs-rest question (``positive_class``), ``n_positive``
how many of them are positive. ``leak_auc`` is the ROC AUC of the attack's scores as they are, with
the attack's own orientation (higher score = positive): it is never folded to max(AUC, 1 − AUC),
so a score that ranks the classes backwards gets an AUC below 0.5. ``label_ari`` is the adjusted Rand
index of an attack's raw clustering (``clusters``) against the true labels: permutation-free (it needs
no naming of the clusters) and 0 for a random clustering by construction, so it needs no chance column.
``count_exact``/``count_l1``: label counts an attack recovered per group of examples (``group_counts``,
``groups``) against the true counts of those examples (`metrics.group_count_metrics`).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from . import metrics
from ..protocol.train import TrainResult, evaluate
from ..protocol.transcript import resolve
from ..records import AttackOutput


class ScoringError(ValueError):
    """The attack produced something the scorer cannot compare with the truth."""


def _check_ids(ids: torch.Tensor, expect: str | None, what: str) -> None:
    """An attack must return the ids its view gave it: handles (< 0) unless it was granted SAMPLE_IDS."""
    ids = torch.as_tensor(ids)
    neg = ids < 0
    if expect == "handles" and not bool(neg.all()):
        raise ScoringError(f"{what}: ids must be the handles of the observations (negative); this attack "
                           f"was not granted sample_ids, so a non-negative id names no release it saw")
    if expect == "samples" and bool(neg.any()):
        raise ScoringError(f"{what}: ids must be sample ids (>= 0): this attack was granted sample_ids")
    if expect is None and bool(neg.any()) and not bool(neg.all()):
        raise ScoringError(f"{what}: ids mix handles (< 0) and sample ids")


def score(out: AttackOutput, result: TrainResult, x_test: torch.Tensor, y_test: torch.Tensor,
          device: str = "cpu", ids: str | None = None) -> dict[str, float]:
    """Score ``out`` against the truth. ``ids``: what the attack's view held ("handles" or "samples";
    None: either, but not a mix), checked before anything is scored."""
    m: dict[str, float] = {}
    truth = result.truth
    if (out.reconstructions is not None or out.labels is not None or out.label_scores is not None
            or out.clusters is not None) and out.ids is None:
        raise ScoringError("attack output has predictions but no sample ids")
    if out.ids is not None:
        _check_ids(out.ids, ids, "output")
    for _, curve_ids, _ in out.extra.get("curve", ()):
        _check_ids(curve_ids, ids, "curve")
    if out.ids is not None and bool((torch.as_tensor(out.ids) < 0).any()):  # opaque handles: only the scorer maps them
        out = dataclasses.replace(out, ids=resolve(out.ids, result.transcript))
    if out.reconstructions is not None:
        x = truth.inputs(out.ids)
        rec = out.reconstructions.detach().cpu().float()
        if rec.shape != x.shape:
            raise ScoringError(f"reconstructions have shape {tuple(rec.shape)}, inputs {tuple(x.shape)}")
        if not torch.isfinite(rec).all():
            raise ScoringError("reconstructions contain NaN or inf")
        m |= metrics.reconstruction_metrics(rec, x)
        m["n_targets"] = float(len(x))
    for step, ids, rec in out.extra.get("curve", ()):  # reconstructions at training checkpoints (FSHA)
        x = truth.inputs(resolve(ids, result.transcript))
        rec = rec.detach().cpu().float().clamp(0, 1)
        if rec.shape != x.shape:
            raise ScoringError(f"curve reconstructions at step {step} have shape {tuple(rec.shape)}, "
                               f"inputs {tuple(x.shape)}")
        m[f"mse@{int(step)}"] = metrics.mse(rec, x)
    if out.positive_class is not None and not isinstance(out.positive_class, int):
        raise ScoringError(f"positive_class must be an int class index, got {out.positive_class!r}")

    def true_labels() -> torch.Tensor:  # binary (label == positive_class) when the attack answered that question
        y = truth.labels(out.ids)
        return y if out.positive_class is None else (y == out.positive_class).long()

    if out.labels is not None or out.label_scores is not None or out.clusters is not None:
        y = true_labels()
        m["n_labels"] = float(len(y))
        if out.positive_class is not None:
            m["n_positive"] = float(y.sum())
    if out.labels is not None:
        m["label_acc"] = metrics.accuracy(out.labels.cpu(), y)
        m["label_chance"] = metrics.chance_accuracy(y)
    if out.label_scores is not None:
        s = out.label_scores.detach().cpu().double()
        try:
            m["leak_auc"] = metrics.multiclass_auc(s, y) if s.ndim == 2 else metrics.auc(s, y)
        except ValueError:  # a single class among the targets: AUC is undefined, leave it out
            pass
    if out.clusters is not None:
        cl = torch.as_tensor(out.clusters).detach().cpu()
        if cl.shape != y.shape:
            raise ScoringError(f"clusters have shape {tuple(cl.shape)}, labels {tuple(y.shape)}")
        m["label_ari"] = metrics.adjusted_rand_index(y, cl)
    if out.group_counts is not None:
        if out.groups is None or out.ids is None:
            raise ScoringError("group_counts need groups (each output row's group) and ids")
        try:
            m |= metrics.group_count_metrics(out.group_counts, out.groups, truth.labels(out.ids))
        except ValueError as e:
            raise ScoringError(f"group counts: {e}") from None
    if out.clone is not None:
        m["clone_acc"] = clone_accuracy(out.clone, result, x_test, y_test, device)
    return m


def clone_accuracy(clone: nn.Module, result: TrainResult, x: torch.Tensor, y: torch.Tensor,
                   device: str = "cpu") -> float:
    """Test accuracy of the clone's front followed by the *real* server part (and tail).

    The UnSplit authors' script composes the real client with the clone's tail; that measures
    something else, so we do it this way round and say so.
    """
    sm = result.model
    full = nn.Sequential(clone.to(device), sm.server, sm.tail)
    return evaluate(full, x, y, device)
