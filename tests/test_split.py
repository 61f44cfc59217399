"""Split equivalence at every depth of both models: forward and gradients."""
from __future__ import annotations

import pytest
import torch

from arena.models import build_model
from arena.protocol.split import SplitDepthError, split, valid_depths

MODELS = [("lenet", (1, 28, 28)), ("cifar-cnn", (3, 32, 32))]


@pytest.mark.parametrize("name,shape", MODELS)
def test_layer_lists_match_the_papers(name, shape):
    model = build_model(name, shape, 10)
    assert len(model) == (11 if name == "lenet" else 18)
    assert list(valid_depths(model)) == list(range(len(model) - 1))


@pytest.mark.parametrize("name,shape", MODELS)
@pytest.mark.parametrize("label_layers", [0, 1])
def test_split_equals_full_model_forward_and_backward(name, shape, label_layers):
    torch.manual_seed(0)
    model = build_model(name, shape, 10).double()
    x = torch.rand(3, *shape, dtype=torch.float64)
    y = torch.tensor([1, 2, 3])
    ref_out = model(x)
    torch.nn.functional.cross_entropy(ref_out, y).backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    for depth in valid_depths(model, label_layers):
        model.zero_grad()
        sm = split(model, depth, label_layers)
        assert len(sm.client) == depth + 1 and len(sm.tail) == label_layers
        # run it as the protocol does: detach at each cut and pass gradients back by hand
        a = sm.client(x)
        a_msg = a.detach().requires_grad_(True)
        h = sm.server(a_msg)
        h_msg = h.detach().requires_grad_(True)
        out = sm.tail(h_msg)
        torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
        torch.nn.functional.cross_entropy(out, y).backward()
        h.backward(h_msg.grad)
        a.backward(a_msg.grad)
        for p, g in zip(model.parameters(), ref_grads):
            torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("depth", [-1, 10, 11, 99, 1.5, True])
def test_impossible_depth_names_the_valid_range(depth):
    model = build_model("lenet", (1, 28, 28), 10)
    with pytest.raises(SplitDepthError, match=r"valid depths are 0\.\.9"):
        split(model, depth)


def test_label_layers_shrink_the_valid_range():
    model = build_model("lenet", (1, 28, 28), 10)
    with pytest.raises(SplitDepthError, match=r"0\.\.8 .*|valid depths are 0\.\.8"):
        split(model, 9, label_layers=1)


def test_model_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match="cannot take inputs"):
        build_model("lenet", (1, 8, 8), 10)
