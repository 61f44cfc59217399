"""Binary tasks: one class of an image dataset against the rest (Li et al.'s label-leakage setting).

Li et al. ("Label leakage and protection in two-party split learning", ICLR 2022) study an
imbalanced binary task, click-through prediction (Criteo: about 25% positives, Avazu about 17%);
their norm attack and the Marvell defense are defined for binary labels. ``<base>-binary`` is
that kind of task built from an image dataset: label 1 ("positive") for one class of ``base``,
label 0 ("rest") for the nine others, so classes = ("rest", <the class's name>) and the
positives are as rare as one class of ten: 10% (Fashion-MNIST, MNIST, CIFAR-10: exactly 10% of
both splits; digits: about 10%).

Registered names: ``fashion-mnist-binary`` (T-shirt/top against the rest), ``mnist-binary`` and
``digits-binary`` (digit 0 against the rest), ``cifar10-binary`` (airplane against the rest): class
0 of each base, one rule for all (``DEFAULT_POSITIVE``). Measured undefended (LeNet, u-shaped,
depth 1, 10,000 private images, 3 epochs, seed 0; the norm attack over the last 8 batches), the
class-0 tasks are ones where verdicts can be read: the norm attack works (leak AUC Fashion-MNIST
0.93-0.95 in two runs, MNIST 0.97; Li et al. report 0.9-1.0) *and* test accuracy is informative
(Fashion-MNIST 0.955-0.959, MNIST 0.995, against 0.900 for always answering "rest"). Other classes
are worse on one count or the other: Fashion-MNIST's Shirt leaks as much (0.96-1.00) but its
accuracy, 0.909-0.922, hardly beats the constant answer, so a defense that ruins the model costs
it almost no accuracy; classes learnt easily leave less in the norm (Trouser 0.75, Bag 0.63,
MNIST's 3 0.80, 8 0.92). CIFAR-10's files were not available to measure.

The files, lookup order and md5 checks are the base dataset's (the base loader does the work, so
a missing file is reported with the base's name and every place searched); the subsets drawn by
``load_dataset`` use the binary name's own streams. Other positive classes or bases:
``register_binary(base, positive, name)``; an unknown base is an error listing the known datasets.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from .formats import DataError
from .sources import DATASETS, RawData

__all__ = ["BINARY", "binary_base", "register_binary"]

SUFFIX = "-binary"
# base dataset -> index of its positive class: class 0 throughout (the module docstring says why)
DEFAULT_POSITIVE = {"fashion-mnist": 0, "mnist": 0, "cifar10": 0, "digits": 0}
# registered binary name -> (base dataset, positive class index); filled by register_binary
BINARY: dict[str, tuple[str, int]] = {}


def binary_base(name: str) -> str | None:
    """The base dataset of a registered binary task (None if ``name`` is not one)."""
    entry = BINARY.get(name)
    return entry[0] if entry else None


def _binary_loader(name: str, base: str, positive: int) -> Callable[..., RawData]:
    def load(*, seed: int = 0, data_dir: str | os.PathLike | None = None, download: bool = True,
             verify: bool = True) -> RawData:
        try:
            raw = DATASETS.get(base)(seed=seed, data_dir=data_dir, download=download, verify=verify)
        except DataError as e:
            raise DataError(f"{name} is {base}'s class {positive} against the rest and reads {base}'s "
                            f"files.\n{e}") from None
        if not 0 <= positive < len(raw.classes):
            raise ValueError(f"positive must be a class index of {base}, 0..{len(raw.classes) - 1}; "
                             f"got {positive}")
        return RawData(raw.x_train, (raw.y_train == positive).astype(np.int64),
                       raw.x_test, (raw.y_test == positive).astype(np.int64),
                       classes=("rest", raw.classes[positive]))

    load.__doc__ = f"{base}'s class {positive} (label 1) against the rest (label 0)."
    return load


def register_binary(base: str, positive: int, name: str | None = None) -> str:
    """Register ``name`` (default ``<base>-binary``): class ``positive`` of ``base`` against the rest.

    ``base`` must be a registered dataset (else the registry's error, which lists them); the
    class index is checked against the base's classes when the data loads. Returns the name."""
    DATASETS.check([base])
    if isinstance(positive, bool) or not isinstance(positive, (int, np.integer)) or positive < 0:
        raise ValueError(f"positive must be a class index (an integer >= 0) of {base}, got {positive!r}")
    name = name or base + SUFFIX
    DATASETS.register(name, _binary_loader(name, base, int(positive)))
    BINARY[name] = (base, int(positive))
    return name


for _base, _positive in DEFAULT_POSITIVE.items():
    register_binary(_base, _positive)
