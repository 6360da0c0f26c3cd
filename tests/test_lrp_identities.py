"""Exact identities between rules (zennit.md §11): LRP-0 is input times gradient; z+ is alpha-beta(1, 0)."""

from __future__ import annotations

import pytest
import torch

import zplug.rules as pr
from zplug.engine import attach_rules


def _vgg_like():
    """Convolutions and dense layers with biases, ReLU, MaxPool and Flatten (the last two keep their gradient)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=1),
        torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 2 * 2, 10),
        torch.nn.ReLU(),
        torch.nn.Linear(10, 5),
    )


def _assign(model, affine_rule):
    assignment = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            assignment[name] = affine_rule
        elif isinstance(module, torch.nn.ReLU):
            assignment[name] = pr.Pass()
    return assignment


def _relevance(model, assignment, x, relevance_out_fn):
    with attach_rules(model, assignment):
        inp = x.clone().requires_grad_()
        out = model(inp)
        (relevance,) = torch.autograd.grad(out, inp, relevance_out_fn(out))
    return relevance


@pytest.mark.parametrize("target", [0, 3])
def test_lrp0_equals_input_times_gradient(target):
    model = _vgg_like().double().eval()
    x = torch.randn((3, 3, 8, 8), dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(torch.tensor([target] * 3), 5).double()

    relevance = _relevance(model, _assign(model, pr.Epsilon(epsilon=1e-14)), x, lambda out: out.detach() * onehot)

    inp = x.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(model(inp), inp, onehot)
    torch.testing.assert_close(relevance, x * gradient, rtol=1e-9, atol=1e-12)


def test_zplus_equals_alpha1_beta0_bit_for_bit():
    model = _vgg_like().double().eval()
    x = torch.randn((2, 3, 8, 8), dtype=torch.float64)
    relevance_out = torch.rand((2, 5), dtype=torch.float64)
    zplus = _relevance(model, _assign(model, pr.ZPlus()), x, lambda out: relevance_out)
    alpha_beta = _relevance(model, _assign(model, pr.AlphaBeta(alpha=1.0, beta=0.0)), x, lambda out: relevance_out)
    assert torch.equal(zplus, alpha_beta)
    assert zplus.abs().sum() > 0


def test_flat_ignores_the_weights_and_wsquare_ignores_the_input():
    layer = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    other = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    x, y = torch.randn((2, 2, 5, 5), dtype=torch.float64), torch.randn((2, 2, 5, 5), dtype=torch.float64)
    relevance_out = torch.rand((2, 3, 5, 5), dtype=torch.float64)
    flat_layer = _relevance(layer, {"": pr.Flat()}, x, lambda out: relevance_out)
    flat_other = _relevance(other, {"": pr.Flat()}, y, lambda out: relevance_out)
    torch.testing.assert_close(flat_layer, flat_other, rtol=1e-12, atol=0)
    wsquare_x = _relevance(layer, {"": pr.WSquare()}, x, lambda out: relevance_out)
    wsquare_y = _relevance(layer, {"": pr.WSquare()}, y, lambda out: relevance_out)
    torch.testing.assert_close(wsquare_x, wsquare_y, rtol=1e-12, atol=0)
    assert not torch.allclose(flat_layer, wsquare_x)
