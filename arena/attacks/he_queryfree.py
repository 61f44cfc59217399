"""He et al.'s query-free model inversion: a shadow client, then white-box inversion of the shadow.

Paper: Z. He, T. Zhang, R. B. Lee, "Model inversion attacks against collaborative inference",
ACSAC 2019, Alg. 3. Threat model (SMASHED + the shadow data's capability): the server knows its
own trained part and the client's architecture (or not: ``arch = "other"``), cannot query the
client, and has labelled data of the task's distribution. It trains a shadow client f1' with
cross-entropy *through its own frozen layers*, so that f1' learns to produce features the server
part understands, then runs the white-box rMLE attack (he_inversion.invert) on f1' against the
observed smashed data.

Decisions the paper leaves loose:
- ``data = "aux"``: the auxiliary set (AUX_DATA), disjoint from the private set (paper: "other
  set"); ``data = "training-set"``: the private training set minus the observed targets
  (TRAIN_DATA, the paper's "same set").
- ``arch = "same"``: a fresh copy of the client architecture; ``"other"``: every k×k convolution is
  replaced by a stack of (k−1)/2 (at least two) 3×3 convolutions with ReLUs and the same output
  shape (the paper's MNIST shadows: one 5×5 → two 3×3, two 5×5 → four 3×3), and every linear layer
  by two linear layers with a ReLU between them. Parameter-free layers are kept.
- In the u-shaped setup the server's layers do not end in logits (the client keeps the last
  layers): the shadow is then trained through the frozen server part *and a fresh copy of the
  label owner's tail* (its architecture is public), trained jointly with the shadow.
- Defaults follow ALGORITHMS.md: 500 inversion iterations, Adam lr 0.1, λ_TV 2 (mean-based TV).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..records import AttackOutput, Capability
from ..protocol.view import ServerView
from ..params import check_choice, check_positive_float, check_positive_int
from .base import Attack, register_attack
from .he_inversion import WINDOWS, invert, report, seeded, train_steps


def _conv_stack(conv: nn.Conv2d) -> list[nn.Module]:
    """3×3 convolutions (ReLU between) with the same input/output shape as ``conv``."""
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    if (k[0] != k[1] or k[0] % 2 == 0 or k[0] < 3 or s != (1, 1) or not isinstance(p, tuple) or p[0] != p[1]
            or conv.dilation != (1, 1) or conv.groups != 1):
        raise ValueError(f"arch='other' supports square odd kernels >= 3, stride 1, groups 1; got {conv}")
    n = max(2, (k[0] - 1) // 2)
    pad_total = p[0] - (k[0] - 1) // 2 + n  # each 3×3 conv with padding q changes the size by 2q − 2
    pads = [pad_total // n + (1 if i < pad_total % n else 0) for i in range(n)]
    layers: list[nn.Module] = []
    c_in = conv.in_channels
    for i, q in enumerate(pads):
        layers.append(nn.Conv2d(c_in, conv.out_channels, 3, padding=q, bias=conv.bias is not None or i < n - 1))
        if i < n - 1:
            layers.append(nn.ReLU())
        c_in = conv.out_channels
    return layers


def other_architecture(client: nn.Sequential) -> nn.Sequential:
    """A different client architecture with the same output shape (see the module docstring)."""
    layers: list[nn.Module] = []
    for layer in client:
        lin = layer if isinstance(layer, nn.Linear) else getattr(layer, "linear", None)
        if isinstance(layer, nn.Conv2d):
            layers += _conv_stack(layer)
        elif isinstance(lin, nn.Linear):
            layers += [nn.Flatten(), nn.Linear(lin.in_features, lin.out_features), nn.ReLU(),
                       nn.Linear(lin.out_features, lin.out_features)]
        elif any(True for _ in layer.parameters()):
            raise ValueError(f"arch='other' has no replacement for a {type(layer).__name__} layer")
        else:
            layers.append(copy.deepcopy(layer))
    return nn.Sequential(*layers)


@register_attack
class HeQueryFree(Attack):
    name = "he-queryfree"
    kind = "inversion"
    requires = frozenset({Capability.SMASHED, Capability.AUX_DATA})
    paper = "He, Zhang, Lee. Model inversion attacks against collaborative inference. ACSAC 2019 (query-free)"
    DATA = {"aux": Capability.AUX_DATA, "training-set": Capability.TRAIN_DATA}

    def __init__(self, data: str = "aux", arch: str = "same", shadow_epochs: int = 5, shadow_lr: float = 1e-3,
                 batch_size: int = 64, n_shadow: int | None = None, iterations: int = 500, lr: float = 0.1,
                 lambda_tv: float = 2.0, window: str = "after", **rest: Any) -> None:
        super().__init__(**rest)
        self.data = check_choice("data", data, tuple(self.DATA))
        self.arch = check_choice("arch", arch, ("same", "other"))
        self.shadow_epochs = check_positive_int("shadow_epochs", shadow_epochs)
        self.shadow_lr = check_positive_float("shadow_lr", shadow_lr)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.n_shadow = None if n_shadow is None else check_positive_int("n_shadow", n_shadow)
        self.iterations = check_positive_int("iterations", iterations)
        self.lr = check_positive_float("lr", lr)
        self.lambda_tv = check_positive_float("lambda_tv", lambda_tv, allow_zero=True)
        self.window = check_choice("window", window, WINDOWS)
        self.requires = frozenset({Capability.SMASHED, self.DATA[self.data]})

    def params(self) -> dict[str, Any]:
        return {"data": self.data, "arch": self.arch, "shadow_epochs": self.shadow_epochs,
                "shadow_lr": self.shadow_lr, "batch_size": self.batch_size, "n_shadow": self.n_shadow,
                "iterations": self.iterations, "lr": self.lr, "lambda_tv": self.lambda_tv, "window": self.window}

    def shadow(self, view: ServerView, generator: torch.Generator) -> tuple[nn.Module, float]:
        """Train the shadow client through the frozen server part; returns it and its accuracy on its data."""
        pool = view.aux if self.data == "aux" else view.train_data
        if pool is None:
            raise RuntimeError(f"he-queryfree(data={self.data}) got no shadow data from the view")
        seed = seeded(generator)
        x, y = pool
        if self.n_shadow is not None and len(x) > self.n_shadow:
            pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: self.n_shadow]
            x, y = x[pick], y[pick]
        dev = view.device
        x, y = x.float().to(dev), y.long().to(dev)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            f1 = view.client_arch()
            if self.arch == "other":
                f1 = other_architecture(f1)
            tail = view.tail_arch()  # empty in vanilla; a fresh label-owner tail in u-shaped (trained too)
        f1, tail = f1.to(dev).train(), tail.to(dev).train()
        server = copy.deepcopy(view.server_part).to(dev).eval()
        for p in server.parameters():
            p.requires_grad_(False)
        ce = nn.CrossEntropyLoss()
        train_steps(lambda idx: ce(tail(server(f1(x[idx]))), y[idx]), [*f1.parameters(), *tail.parameters()],
                    len(x), epochs=self.shadow_epochs, batch_size=self.batch_size, lr=self.shadow_lr, seed=seed,
                    progress=report(view))
        with torch.no_grad():
            acc = float((tail(server(f1(x))).argmax(1) == y).float().mean())
        return f1.eval(), acc

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        ids, acts = view.stacked("smashed", self.window)
        f1, acc = self.shadow(view, generator)
        with torch.no_grad():
            shape = tuple(f1(torch.zeros(1, *view.input_shape, device=view.device)).shape[1:])
        if shape != tuple(acts.shape[1:]):
            raise RuntimeError(f"shadow output {shape} differs from the observed activations {tuple(acts.shape[1:])}")
        rec = invert(f1, acts.to(view.device), view.input_shape, iterations=self.iterations, lr=self.lr,
                     lambda_tv=self.lambda_tv, progress=report(view))
        return AttackOutput(ids=ids, reconstructions=rec.cpu(), extra={"shadow_acc": acc})
