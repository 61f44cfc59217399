"""Shared by the defense tests: one cell's training as the runner does it (same seeds for every
defense), and the bit-for-bit comparison of two runs' transcripts (strength zero reproduces `none`)."""
from __future__ import annotations

import torch

from arena.defenses import DEFENSES
from arena.models import build_model
from arena.protocol.train import make_setup, train
from arena.records import Scenario
from arena.seeding import seed_everything, torch_generator


def train_cell(data, defense="none", setup="vanilla", cfg=None, dataset="digits", stack=(), **params):
    """Train one cell: LeNet at depth 1, seed 0; ``stack``: defenses applied first, as (name, params)
    pairs. Returns (defense, the undefended setup, the defended setup, the run)."""
    sc = Scenario(dataset, "lenet", 1, setup=setup, seed=0, **({} if cfg is None else {"train": cfg}))
    seed_everything(0, "init")
    base = make_setup(sc, build_model("lenet", data.shape, data.num_classes), data.shape)
    first = base
    for name, p in stack:
        first = DEFENSES.create(name, **p).apply(first, torch_generator(0, "defense", name))
    d = DEFENSES.create(defense, **params)
    defended = d.apply(first, torch_generator(0, "defense"))
    seed_everything(0, "train")
    res = train(defended, data, torch_generator(0, "train"))
    d.after_training(res)
    return d, base, defended, res


def transcript_fields(res) -> list:
    """Every tensor the server observed, in order (None where it saw nothing)."""
    out = []
    for w in ("before", "after"):
        for o in res.transcript.observations(w):
            out += [o.ids, o.smashed, o.labels, o.cut_grad, o.server_out]
            out += [g for tg in (o.tail_grads or []) for g in tg.values()]
    return out


def assert_same_transcript(res, ref) -> None:
    """The two runs' transcripts are equal bit for bit (and hold at least 8 observed tensors)."""
    a, b = transcript_fields(res), transcript_fields(ref)
    assert len(a) == len(b) and sum(t is not None for t in a) >= 8
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(x, y)
