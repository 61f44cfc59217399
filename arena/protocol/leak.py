"""What the plaintext gradients of an encrypted protocol still give away: the activations, rebuilt.

New here (ALGORITHMS.md, "HE split learning: what the plaintext gradients give away": the HE split
learning papers claim the server learns nothing of the activations; the closest published results are
on HE vertical logistic regression, Phong et al. 2018). In the `he` protocol with a trained server layer
the server receives, per batch, the gradient at its output g_h (B x m, the cut gradient) and its layer's
weight gradient dL/dW = g_h^T a (m x d). The activations a (B x d) solve the linear system
g_h^T a = dL/dW: exactly when B <= m and g_h has full column rank B (a softmax-cross-entropy gradient
almost surely has), by least squares. Past that (B > m, or rank r < B) the system is under-determined:
least squares returns the minimum-norm solution, the projection of a onto the row space of g_h^T, and
each activation row is only known up to the null space: `derive_activations` reports the rank so the
cell says which case it was.

This is the attacker's computation on what it received, a pure function of (g_h, dL/dW): it never
reads the plaintext activations (the transcript has none under `he`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from .transcript import Observation


def derive_activations(cut_grad: torch.Tensor, weight_grad: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Least-squares activations ``a`` (B x d) from g_h (B x m) and dL/dW = g_h^T a (m x d); returns
    (a, rank of g_h). Exact when rank == B (so B <= m); otherwise the minimum-norm solution."""
    if cut_grad.dim() != 2 or weight_grad.dim() != 2 or cut_grad.shape[1] != weight_grad.shape[0]:
        raise ValueError(f"need g_h (B x m) and dL/dW (m x d); got {tuple(cut_grad.shape)} and "
                         f"{tuple(weight_grad.shape)}")
    g = cut_grad.detach().double().cpu()
    w = weight_grad.detach().double().cpu()
    # the rank at the precision the gradients were sent in (float32 rounding is no information)
    rank = int(torch.linalg.matrix_rank(g, rtol=torch.finfo(cut_grad.dtype).eps * max(g.shape)))
    a = torch.linalg.lstsq(g.T, w, driver="gelsd").solution  # B x d; min-norm when under-determined
    return a.float(), rank


def _weight_key(server: nn.Module) -> str | None:
    """The weight gradient whose output gradient is the cut gradient: the server part must be a single
    parametrised layer, linear (a 2-D weight; a Linear or a flattening Linear), with nothing after it
    (the `he` default, server_layers 1)."""
    layers = list(server) if isinstance(server, nn.Sequential) else [server]
    with_params = [i for i, m in enumerate(layers) if any(True for _ in m.parameters())]
    if len(with_params) != 1 or with_params[0] != len(layers) - 1:
        return None
    weights = [(n, p) for n, p in layers[-1].named_parameters() if n.endswith("weight")]
    if len(weights) != 1 or weights[0][1].dim() != 2:
        return None
    prefix = f"{with_params[0]}." if isinstance(server, nn.Sequential) else ""
    return prefix + weights[0][0]


def derivation_unavailable(server: nn.Module) -> str | None:
    """Why smashed data cannot be rebuilt from this server part's gradients (None: it can)."""
    if _weight_key(server) is None:
        return ("the server part is not a single linear layer, so its weight gradient pairs the cut gradient "
                "with an intermediate activation, not the smashed data")
    return None


def with_derived_smashed(windows: dict[str, list[Observation]], server: nn.Module,
                         shape: tuple[int, ...] | None = None) -> tuple[dict[str, list[Observation]], dict[str, Any]]:
    """The windows with ``smashed`` rebuilt (in the client's output ``shape`` per example; None: flat) on
    every observation that carries the cut gradient and the server's weight gradient (the others are
    left as they are); and a summary: batches rebuilt, how many exactly (rank == batch), the largest
    batch and the layer's output width m."""
    key = _weight_key(server)
    if key is None:
        raise ValueError(derivation_unavailable(server))
    out: dict[str, list[Observation]] = {}
    n = exact = largest = 0
    m = None
    for w, obs in windows.items():
        out[w] = []
        for o in obs:
            if o.smashed is None and o.cut_grad is not None and o.server_grads and key in o.server_grads:
                a, rank = derive_activations(o.cut_grad.flatten(1), o.server_grads[key])
                n, exact, largest = n + 1, exact + int(rank == len(a)), max(largest, len(a))
                m = o.cut_grad.flatten(1).shape[1]
                o = dataclasses.replace(o, smashed=a if shape is None else a.reshape(len(a), *shape))
            out[w].append(o)
    return out, {"batches": n, "exact": exact, "largest_batch": largest, "outputs": m}
