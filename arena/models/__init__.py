"""The papers' networks as one registry (`MODELS`): LeNet and the CIFAR CNN (`networks`), FSHA's
residual client (`resnet`, which registers itself on top of `networks`).

Imports only the vocabulary layer (`arena.registry`); order inside: networks <- resnet.
"""
from . import resnet  # noqa: F401  (registers "fsha-resnet")
from .networks import MODELS, FlattenLinear, build_model, cifar_cnn, default_model, glorot_init, lenet

__all__ = ["MODELS", "FlattenLinear", "build_model", "cifar_cnn", "default_model", "glorot_init", "lenet"]
