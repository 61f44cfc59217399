"""Binary tasks, one class against the rest (arena.data.binary): the registered names, labels and
positive rates, the base's files and md5 checks, clear errors, and what the runner needs to plan them."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import arena.data.sources as sources
from arena.data.binary import BINARY, DEFAULT_POSITIVE, binary_base, register_binary
from arena.data.sources import DATASETS, DataError, load_dataset
from arena.registry import UnknownNameError

IDX = sources.IDX_FILES


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the user's cache, ARENA_DATA or system datasets, and none downloads."""
    monkeypatch.delenv("ARENA_DATA", raising=False)
    monkeypatch.setenv("ARENA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SYSTEM_ROOTS", (tmp_path / "system",))


def _write_idx(path: Path, arr: np.ndarray) -> None:
    """One IDX file in the official format (unsigned bytes), gzipped as the mirrors serve it."""
    arr = np.asarray(arr, dtype=np.uint8)
    header = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in arr.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(header + arr.tobytes()))


def _write_fashion(root: Path, n_train: int = 40, n_test: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Tiny Fashion-MNIST-format files, each class equally often; returns the label arrays."""
    rng = np.random.default_rng(0)
    y_train, y_test = rng.permutation(np.arange(n_train) % 10), np.arange(n_test) % 10
    d = root / "fashion-mnist" / "raw"
    _write_idx(d / IDX[0], rng.integers(0, 256, (n_train, 28, 28)))
    _write_idx(d / IDX[1], y_train)
    _write_idx(d / IDX[2], rng.integers(0, 256, (n_test, 28, 28)))
    _write_idx(d / IDX[3], y_test)
    return y_train, y_test


def test_the_binary_tasks_are_registered_and_listed():
    names = set(DATASETS.names())
    assert {"fashion-mnist-binary", "mnist-binary", "cifar10-binary", "digits-binary"} <= names
    assert BINARY["fashion-mnist-binary"] == ("fashion-mnist", 0)
    assert binary_base("cifar10-binary") == "cifar10" and binary_base("cifar10") is None
    assert DEFAULT_POSITIVE == {"fashion-mnist": 0, "mnist": 0, "cifar10": 0, "digits": 0}


def test_idx_binary_task_is_one_class_against_the_rest(tmp_path):
    y_train, y_test = _write_fashion(tmp_path)
    kw = dict(data_dir=tmp_path, download=False, verify=False)
    base, binary = load_dataset("fashion-mnist", **kw), load_dataset("fashion-mnist-binary", **kw)
    assert binary.classes == ("rest", "T-shirt/top") and binary.num_classes == 2
    assert torch.equal(binary.x_train, base.x_train) and torch.equal(binary.x_test, base.x_test)
    assert torch.equal(binary.y_train, torch.from_numpy((y_train == 0).astype(np.int64)))
    assert torch.equal(binary.y_test, torch.from_numpy((y_test == 0).astype(np.int64)))
    assert set(binary.y_train.tolist()) == {0, 1} and binary.y_train.dtype == torch.int64
    assert float(binary.y_train.float().mean()) == pytest.approx(0.1)  # one class of ten: 10% positives
    assert float(binary.y_test.float().mean()) == pytest.approx(0.1)
    sub = load_dataset("fashion-mnist-binary", n_train=20, seed=3, **kw)  # subsets: its own streams
    assert len(sub.y_train) == 20 and set(sub.y_train.tolist()) <= {0, 1}


def test_idx_binary_task_checks_the_base_md5_and_names_the_base_when_files_are_missing(tmp_path):
    _write_fashion(tmp_path)
    with pytest.raises(DataError, match="md5") as e:  # verify=True (the default): hand-made files fail
        load_dataset("fashion-mnist-binary", data_dir=tmp_path, download=False)
    assert "fashion-mnist-binary is fashion-mnist's class 0 against the rest" in str(e.value)
    with pytest.raises(DataError) as e:
        load_dataset("mnist-binary", data_dir=tmp_path / "empty", download=False)
    msg = str(e.value)
    assert "mnist-binary is mnist's class 0" in msg and "dataset 'mnist' not found" in msg
    assert str(tmp_path / "empty" / "mnist" / "raw") in msg  # every place searched is listed


def test_digits_binary_needs_no_files():
    base, binary = load_dataset("digits", seed=1), load_dataset("digits-binary", seed=1)
    assert binary.classes == ("rest", "0") and binary.num_classes == 2
    assert torch.equal(binary.x_train, base.x_train)  # the same split of the same images
    assert torch.equal(binary.y_train, (base.y_train == 0).long())
    rate = float(torch.cat([binary.y_train, binary.y_test]).float().mean())
    assert 0.09 < rate < 0.11, rate  # 178 zeros of 1797


def test_register_binary_validates_the_base_and_the_class():
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'fashoin-mnist'.*known datasets: .*fashion-mnist"):
        register_binary("fashoin-mnist", 0)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="positive must be a class index"):
            register_binary("digits", bad)
    name = register_binary("digits", 12, name="digits-12-binary")
    try:
        with pytest.raises(ValueError, match=r"positive must be a class index of digits, 0..9; got 12"):
            load_dataset(name)
    finally:
        DATASETS.unregister(name)
        BINARY.pop(name)
    name = register_binary("digits", 8, name="digits-8-binary")
    try:
        d = load_dataset(name)
        assert d.classes == ("rest", "8") and name in DATASETS.names()
    finally:
        DATASETS.unregister(name)
        BINARY.pop(name)


def test_the_runner_knows_the_binary_shapes_and_models():
    from arena.run.config import Experiment
    from arena.run.runner import KNOWN_SHAPES, effective_sizes

    assert KNOWN_SHAPES["fashion-mnist-binary"] == ((1, 28, 28), 2)
    assert KNOWN_SHAPES["cifar10-binary"] == ((3, 32, 32), 2)
    exp = Experiment()
    assert exp.model_for("cifar10-binary") == "cifar-cnn" and exp.model_for("digits-binary") == "lenet"
    assert effective_sizes(1437, None, 5000, "digits-binary") == (1150, 287)  # as for digits


def test_a_binary_run_scores_the_deployed_models_test_auc(tiny_data):
    """Test AUC is computed from the deployed pipeline's P(class 1), against the truth: equal to the
    reference AUC of those scores, and a perfect ranking gives 1."""
    from arena.models import build_model
    from arena.protocol.train import Data, evaluate, make_setup, train
    from arena.records import Scenario, TrainConfig
    from arena.scoring.metrics import auc
    from arena.seeding import seed_everything, torch_generator

    seed_everything(0, "init")
    d = tiny_data
    b = lambda y: (y == 0).long()  # noqa: E731
    data = Data(d.x_train, b(d.y_train), d.x_test, b(d.y_test), d.x_aux, b(d.y_aux), 2)
    sc = Scenario("digits-binary", "lenet", 1, setup="u-shaped", train=TrainConfig(epochs=3, batch_size=32))
    res = train(make_setup(sc, build_model("lenet", data.shape, 2), data.shape), data, torch_generator(0, "t"))
    assert res.test_positive_scores.shape == (len(data.y_test),)
    again: list = []
    assert evaluate(res.model, data.x_test, data.y_test, positive_scores=again) == res.test_acc
    assert torch.equal(torch.cat(again), res.test_positive_scores)
    assert auc(res.test_positive_scores, data.y_test) > 0.9  # digit 0 is easy: the model ranks it well
