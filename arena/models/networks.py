"""The papers' architectures as layer lists (nn.Sequential), registered by name.

Layer indices follow the UnSplit paper / ALGORITHMS.md: a flatten is folded into the first linear
layer so that index k is the k-th layer of the paper's list and "split depth k" means the client
runs layers 0..k inclusive.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..registry import Registry

ModelFactory = Callable[[tuple[int, int, int], int], nn.Sequential]
MODELS: Registry[nn.Sequential] = Registry("model", entry_point_group="arena.models")


class FlattenLinear(nn.Module):
    """Flatten then Linear: one layer of the paper's list, so depth indices stay the paper's."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def _flat_size(layers: list[nn.Module], in_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        x = torch.zeros(1, *in_shape)
        for layer in layers:
            x = layer(x)
    return int(x[0].numel())


@MODELS.register("lenet")
def lenet(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> nn.Sequential:
    """UnSplit's MNIST/Fashion-MNIST network (He et al. use the same): depths 0..9 split it."""
    c = in_shape[0]
    convs: list[nn.Module] = [
        nn.Conv2d(c, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
    ]
    flat = _check_flat(convs, in_shape, "lenet")
    return nn.Sequential(
        *convs,
        FlattenLinear(flat, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


@MODELS.register("cifar-cnn")
def cifar_cnn(in_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> nn.Sequential:
    """UnSplit's CIFAR-10 network: six 3×3 convolutions in three pooled blocks, then 2 linear layers."""
    c = in_shape[0]

    def conv(i: int, o: int) -> nn.Conv2d:
        return nn.Conv2d(i, o, 3, padding=1)

    convs: list[nn.Module] = [
        conv(c, 64), nn.ReLU(), conv(64, 64), nn.ReLU(), nn.MaxPool2d(2),
        conv(64, 128), nn.ReLU(), conv(128, 128), nn.ReLU(), nn.MaxPool2d(2),
        conv(128, 128), nn.ReLU(), conv(128, 128), nn.ReLU(), nn.MaxPool2d(2),
    ]
    flat = _check_flat(convs, in_shape, "cifar-cnn")
    return nn.Sequential(*convs, FlattenLinear(flat, 512), nn.Sigmoid(), nn.Linear(512, num_classes))


def _check_flat(convs: list[nn.Module], in_shape: tuple[int, int, int], name: str) -> int:
    try:
        return _flat_size(convs, in_shape)
    except RuntimeError as e:
        raise ValueError(f"model {name!r} cannot take inputs of shape {in_shape}: {e}") from None


DEFAULT_MODEL = {"mnist": "lenet", "fashion-mnist": "lenet", "digits": "lenet", "cifar10": "cifar-cnn"}


def default_model(dataset: str) -> str:
    return DEFAULT_MODEL.get(dataset, "lenet")


def build_model(name: str, in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    model = MODELS.create(name, in_shape=tuple(in_shape), num_classes=num_classes)
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model {name!r} must be an nn.Sequential layer list, got {type(model).__name__}")
    return model


def glorot_init(module: nn.Module) -> nn.Module:
    """Keras' default initialisation (how TensorFlow networks, e.g. FSHA's authors', start): Glorot-uniform
    weights, zero biases, for every convolution, transposed convolution and linear layer of ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module

