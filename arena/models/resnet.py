"""The small residual network of the FSHA paper's client (Pasquini et al., CCS 2021), as a layer list.

Registered as ``fsha-resnet``. Layer indices (split depth k = the client runs layers 0..k):

    0 stem: Conv(c→64, 3) · BatchNorm · ReLU · MaxPool2
    1 ResBlock(64)            2 ResBlock(64→128, stride 2)
    3 ResBlock(128)           4 ResBlock(128→256, stride 2)
    5 global average pool     6 Linear(256→classes)

Depth 4 is the paper's split "at the 4th residual block": a 256×4×4 activation for 28×28 inputs
(the authors resize MNIST to 32×32, which gives the same 4×4). Stem and blocks follow the authors'
public code (architectures.py): pre-activation ReLU→conv→ReLU→conv plus a strided convolutional
shortcut when the block downsamples, no batch norm inside the blocks. The authors' code only uses the client
part (its FSHA simulation has no task loss); the two-layer server head is ours, so that the split
model is a classifier like the other arena models.
"""
from __future__ import annotations

import torch
from torch import nn

from .networks import MODELS, glorot_init


class FrozenStatsBN(nn.BatchNorm2d):
    """Batch norm that always normalises with its (never updated) running statistics, 0 and 1: what a
    Keras BatchNormalization computes when the model is called without ``training=True``, as the
    authors' FSHA.py calls its client. Only the affine scale and shift learn."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                        False, 0.0, self.eps)


class Stem(nn.Module):
    def __init__(self, in_ch: int, out_ch: int = 64, tf: bool = False) -> None:
        super().__init__()
        self.tf = tf  # the authors' run: pixels on [-1,1], batch norm in inference mode (Keras eps)
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.bn = FrozenStatsBN(out_ch, eps=1e-3) if tf else nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = 2 * x - 1 if self.tf else x
        return nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)


class ResBlock(nn.Module):
    """ReLU → conv(stride) → ReLU → conv, plus the input (through a strided conv if the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = (nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
                         if stride != 1 or in_ch != out_ch else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(torch.relu(self.conv1(torch.relu(x))))
        return self.shortcut(x) + h


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


@MODELS.register("fsha-resnet")
def fsha_resnet(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
                tf: bool = False) -> nn.Sequential:
    """FSHA's residual client (depth 4 = the paper's split) with a pooled linear head."""
    c, h, w = in_shape
    if min(h, w) < 8:
        raise ValueError(f"model 'fsha-resnet' needs inputs of at least 8×8 pixels, got {in_shape}")
    model = nn.Sequential(
        Stem(c, 64, tf=tf),
        ResBlock(64, 64),
        ResBlock(64, 128, stride=2),
        ResBlock(128, 128),
        ResBlock(128, 256, stride=2),
        GlobalAvgPool(),
        nn.Linear(256, num_classes),
    )
    return glorot_init(model) if tf else model  # tf: Keras' default initialisation


@MODELS.register("fsha-resnet-tf")
def fsha_resnet_tf(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> nn.Sequential:
    """``fsha-resnet`` as the authors' TensorFlow code runs it: pixels mapped to [-1,1] inside the stem,
    the stem's batch norm in inference mode (FrozenStatsBN), Keras' Glorot-uniform init, zero biases."""
    return fsha_resnet(in_shape, num_classes, tf=True)
