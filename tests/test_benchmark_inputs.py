"""benchmarks/fsha_paper.py --input 32x3: the authors' input (bilinear 32×32, grey over 3 channels)
registered as an arena dataset from outside arena."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from arena.data.sources import DATASETS, RawData, load_dataset

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "fsha_paper.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("fsha_paper_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_resize_keeps_range_and_repeats_grey(bench):
    x = np.zeros((2, 1, 28, 28), np.uint8)
    x[0, 0, 8:20, 8:20] = 255  # a bright square
    x[1] = 128
    r = bench.resized_32x3(x)
    assert r.shape == (2, 3, 32, 32) and r.dtype == np.float32
    assert np.array_equal(r[:, 0], r[:, 1]) and np.array_equal(r[:, 0], r[:, 2])
    assert r[0, 0, 16, 16] == 1.0 and r[0, 0, 0, 0] == 0.0  # inside / outside the square
    assert 0.0 < r[0, 0, 9, 9] <= 1.0 and r.min() >= 0.0 and r.max() <= 1.0
    assert np.allclose(r[1], 128 / 255)  # a flat image stays flat
    # bilinear with half-pixel centres on [0,1] floats gives the same as on uint8
    assert np.allclose(bench.resized_32x3(x.astype(np.float32) / 255), r, atol=1e-6)
    # 28 -> 32 upsampling preserves the mean brightness of a smooth image within a few percent
    assert abs(float(r[0].mean()) - float(x[0].mean() / 255)) < 0.02


def test_registers_a_32x3_dataset_from_the_base_one(bench):
    rng = np.random.default_rng(0)
    raw = RawData(rng.integers(0, 256, (40, 1, 28, 28), dtype=np.uint8), np.arange(40) % 4,
                  rng.integers(0, 256, (10, 1, 28, 28), dtype=np.uint8), np.arange(10) % 4, ("a", "b", "c", "d"))
    DATASETS.register("bench-grey", lambda **kw: raw)
    try:
        name = bench.register_32x3("bench-grey")
        assert name == "bench-grey-32x3" and bench.register_32x3("bench-grey") == name  # idempotent
        d = load_dataset(name, download=False)
        assert d.shape == (3, 32, 32) and len(d.y_train) == 40 and d.num_classes == 4
        assert torch.equal(d.y_train, torch.as_tensor(raw.y_train))
        assert torch.allclose(d.x_train[:, 0], d.x_train[:, 2])
    finally:
        DATASETS.unregister("bench-grey")
        DATASETS.unregister("bench-grey-32x3")


def test_refuses_colour_images(bench):
    raw = RawData(np.zeros((4, 3, 8, 8), np.uint8), np.zeros(4), np.zeros((2, 3, 8, 8), np.uint8), np.zeros(2),
                  ("a",))
    DATASETS.register("bench-colour", lambda **kw: raw)
    try:
        with pytest.raises(ValueError, match="grey images"):
            load_dataset(bench.register_32x3("bench-colour"), download=False)
    finally:
        DATASETS.unregister("bench-colour")
        DATASETS.unregister("bench-colour-32x3")
