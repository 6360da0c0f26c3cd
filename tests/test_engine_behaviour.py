"""The engine where Zennit 0.5.1 is wrong or fails: checked against the formulas, not against Zennit.

Several tensor inputs (positional and keyword), non-tensor arguments, a module called twice,
tuple outputs, in-place operations, and relevance that is differentiable (second order).
"""

from __future__ import annotations

import pytest
import torch

import zplug.rules as pr
from zplug.engine import attach_rules
from zplug.errors import RelevanceError
from zplug.layers import Sum

F64 = torch.float64


def _leaves(*shapes):
    return tuple(torch.randn(shape, dtype=F64, requires_grad=True) for shape in shapes)


class Holder(torch.nn.Module):
    """A model whose forward is given as a function of itself and the inputs."""

    def __init__(self, forward, **children):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)
        self._forward = forward

    def forward(self, *args, **kwargs):
        return self._forward(self, *args, **kwargs)


def test_sum_of_two_inputs_splits_relevance_in_proportion():
    a, b = _leaves((3, 4), (3, 4))
    relevance_out = torch.randn((3, 4), dtype=F64)
    model = Holder(lambda m, a, b: m.add(a, b), add=Sum())
    with attach_rules(model, {"add": pr.Norm(stabilizer=1e-12)}):
        rel_a, rel_b = torch.autograd.grad(model(a, b), (a, b), relevance_out)
    share = relevance_out / (a + b).detach()
    torch.testing.assert_close(rel_a, a.detach() * share, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(rel_b, b.detach() * share, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(rel_a + rel_b, relevance_out, rtol=1e-9, atol=1e-12)


def test_three_inputs_with_broadcasting():
    a, b, c = _leaves((2, 3, 4), (3, 1), (4,))
    relevance_out = torch.randn((2, 3, 4), dtype=F64)
    add = Sum()
    with attach_rules(add, {"": pr.Norm(stabilizer=1e-12)}):
        rel_a, rel_b, rel_c = torch.autograd.grad(add(a, b, c), (a, b, c), relevance_out)
    share = relevance_out / (a + b + c).detach()
    torch.testing.assert_close(rel_a, a.detach() * share, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(rel_b, b.detach() * share.sum((0, 2)).unsqueeze(1), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(rel_c, c.detach() * share.sum((0, 1)), rtol=1e-9, atol=1e-12)


class ScaledAdd(torch.nn.Module):
    """``scale * (x + y)`` with a keyword tensor ``y`` and a non-tensor ``scale``."""

    def forward(self, x, *, y, scale=1.0):
        return scale * (x + y)


class Affine(torch.nn.Module):
    """``k * x + y``: a float between two tensors in the positional arguments, and an int tensor."""

    def forward(self, x, k, y, index):
        return k * x + y[:, index]


def test_keyword_tensor_and_non_tensor_arguments():
    x, y = _leaves((3, 4), (3, 4))
    relevance_out = torch.randn((3, 4), dtype=F64)
    module = ScaledAdd()
    with attach_rules(module, {"": pr.Epsilon(epsilon=1e-12)}):
        rel_x, rel_y = torch.autograd.grad(module(x, y=y, scale=3.0), (x, y), relevance_out)
    share = relevance_out / (x + y).detach()
    torch.testing.assert_close(rel_x, x.detach() * share, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(rel_y, y.detach() * share, rtol=1e-9, atol=1e-12)


def test_non_tensor_positional_arguments_are_kept():
    x, y = _leaves((3, 4), (3, 6))
    index = torch.tensor([5, 0, 2, 2])
    relevance_out = torch.randn((3, 4), dtype=F64)
    module = Affine()
    with attach_rules(module, {"": pr.Epsilon(epsilon=1e-12)}):
        rel_x, rel_y = torch.autograd.grad(module(x, 2.5, y, index), (x, y), relevance_out)
    picked = y.detach()[:, index]
    share = relevance_out / (2.5 * x.detach() + picked)
    torch.testing.assert_close(rel_x, 2.5 * x.detach() * share, rtol=1e-9, atol=1e-12)
    expected_y = torch.zeros_like(y).index_add_(1, index, picked * share)
    torch.testing.assert_close(rel_y, expected_y, rtol=1e-9, atol=1e-12)


def test_module_called_twice_gets_relevance_per_call():
    (x,) = _leaves((3, 4))
    layer = torch.nn.Linear(4, 4).double()
    model = Holder(lambda m, x: m.layer(torch.tanh(m.layer(x))), layer=layer)
    relevance_out = torch.randn((3, 4), dtype=F64)
    calls = []
    with attach_rules(model, {"layer": pr.Epsilon(epsilon=1e-12)}, observers=(lambda *a: calls.append(a[1]),)):
        (relevance,) = torch.autograd.grad(model(x), x, relevance_out)
    assert len(calls) == 2
    with torch.no_grad():
        w, b = layer.weight, layer.bias
        z1 = x @ w.T + b
        h = torch.tanh(z1)
        z2 = h @ w.T + b
        rel_h = h * ((relevance_out / z2) @ w)
        rel_z1 = rel_h * (1 - h**2)  # tanh keeps its gradient
        expected = x * ((rel_z1 / z1) @ w)
    torch.testing.assert_close(relevance, expected, rtol=1e-8, atol=1e-12)


class Split(torch.nn.Module):
    """Two outputs of one input: ``(3 * x[:, :2], x[:, 2:] + x[:, :2])``."""

    def forward(self, x):
        return 3.0 * x[:, :2], x[:, 2:] + x[:, :2]


@pytest.mark.parametrize("rule", [pr.Norm(stabilizer=1e-12), pr.Epsilon(epsilon=1e-12)])
def test_tuple_outputs_add_the_shares_of_every_output(rule):
    (x,) = _leaves((3, 4))
    r1, r2 = torch.randn((3, 2), dtype=F64), torch.randn((3, 2), dtype=F64)
    module = Split()
    with attach_rules(module, {"": rule}):
        out1, out2 = module(x)
        (relevance,) = torch.autograd.grad((out1, out2), x, (r1, r2))
    xd = x.detach()
    s1, s2 = r1 / (3.0 * xd[:, :2]), r2 / (xd[:, 2:] + xd[:, :2])
    expected = torch.cat([xd[:, :2] * (3.0 * s1 + s2), xd[:, 2:] * s2], dim=1)
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12)


class Pairwise(torch.nn.Module):
    def forward(self, a, b):
        return torch.relu(a), torch.tanh(b)


def test_pass_on_several_inputs_and_outputs_passes_each_through():
    a, b = _leaves((2, 3), (4,))
    r1, r2 = torch.randn((2, 3), dtype=F64), torch.randn((4,), dtype=F64)
    module = Pairwise()
    with attach_rules(module, {"": pr.Pass()}):
        rel_a, rel_b = torch.autograd.grad(module(a, b), (a, b), (r1, r2))
    assert torch.equal(rel_a, r1) and torch.equal(rel_b, r2)


def test_lrp_rule_on_tuple_outputs_says_it_needs_one_output():
    (x,) = _leaves((3, 4))
    module = Split()
    with attach_rules(module, {"": pr.ZPlus()}):
        out1, out2 = module(x)
        with pytest.raises(RelevanceError) as info:
            torch.autograd.grad((out1, out2), x, (torch.ones_like(out1), torch.ones_like(out2)))
    assert str(info.value) == "rule 'zplus' needs a layer with one output; '' has 2"


def test_in_place_change_of_the_output_is_detected_and_the_output_recomputed():
    (x,) = _leaves((3, 4))
    layer = torch.nn.Linear(4, 5).double()

    def forward(m, x):
        out = m.layer(x)
        out.mul_(2.0)  # in place, after the hooked layer
        return torch.nn.functional.relu(out, inplace=True)

    model = Holder(forward, layer=layer)
    relevance_out = torch.randn((3, 5), dtype=F64)
    with attach_rules(model, {"layer": pr.Epsilon(epsilon=1e-12)}):
        (relevance,) = torch.autograd.grad(model(x), x, relevance_out)
    with torch.no_grad():
        z = layer(x)  # the layer's own output, before the in-place changes
        upper = relevance_out * 2.0 * (z > 0)  # the gradient of relu(2 z)
        expected = x * ((upper / z) @ layer.weight)
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12)


def test_in_place_activation_module_after_a_hooked_layer():
    (x,) = _leaves((3, 4))
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(inplace=True), torch.nn.Linear(5, 2)).double()
    relevance_out = torch.randn((3, 2), dtype=F64)
    with attach_rules(model, {"0": pr.Epsilon(epsilon=1e-12), "2": pr.Epsilon(epsilon=1e-12)}):
        assert model[1].inplace is False
        (relevance,) = torch.autograd.grad(model(x), x, relevance_out)
    assert model[1].inplace is True
    with torch.no_grad():
        z1 = model[0](x)
        h = torch.relu(z1)
        z2 = model[2](h)
        rel_h = h * ((relevance_out / z2) @ model[2].weight)
        expected = x * ((rel_h / z1) @ model[0].weight)
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12)


def test_in_place_change_of_an_input_raises_a_clear_error():
    (x,) = _leaves((3, 4))
    layer = torch.nn.Linear(4, 5).double()
    with attach_rules(layer, {"": pr.Epsilon()}):
        inp = x * 1.0
        out = layer(inp)
        inp.add_(1.0)
        with pytest.raises(RelevanceError) as info:
            torch.autograd.grad(out, x, torch.ones_like(out))
    assert str(info.value) == (
        "an input of layer '' (rule 'epsilon') was modified in place after the layer's forward pass, so its "
        "relevance cannot be computed; make the operation that modified it out of place "
        "(e.g. 'x = x + 1' instead of 'x += 1')"
    )


SECOND_ORDER_CASES = {
    "epsilon_linear": (pr.Epsilon(epsilon=0.1), lambda: torch.nn.Linear(4, 3), (2, 4)),
    "zplus_conv": (pr.ZPlus(), lambda: torch.nn.Conv2d(2, 3, 2), (1, 2, 3, 3)),
    "alpha_beta_conv_transpose": (pr.AlphaBeta(), lambda: torch.nn.ConvTranspose2d(2, 2, 2, stride=2), (1, 2, 2, 2)),
    "gamma_conv1d": (pr.Gamma(), lambda: torch.nn.Conv1d(2, 3, 2), (2, 2, 4)),
    "zbox_linear": (pr.ZBox(low=-3.0, high=3.0), lambda: torch.nn.Linear(4, 3), (2, 4)),
    "norm_avg_pool": (pr.Norm(), lambda: torch.nn.AvgPool1d(2), (2, 2, 4)),
    "beta_smooth": (pr.ReLUBetaSmooth(beta_smooth=3.0), torch.nn.ReLU, (2, 5)),
}


@pytest.mark.parametrize("case", SECOND_ORDER_CASES)
def test_relevance_is_differentiable_with_create_graph(case):
    rule, make, shape = SECOND_ORDER_CASES[case]
    module = make().double()
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    relevance_out = torch.randn_like(module(x)).requires_grad_()

    def relevance(x, relevance_out):
        with attach_rules(module, {"": rule}):
            (rel,) = torch.autograd.grad(module(x), x, relevance_out, create_graph=True)
        return rel

    with attach_rules(module, {"": rule}):
        (first_order,) = torch.autograd.grad(module(x), x, relevance_out)
    torch.testing.assert_close(relevance(x, relevance_out), first_order, rtol=1e-12, atol=1e-14)
    # finite differences of the relevance w.r.t. the input and the upper relevance
    assert torch.autograd.gradcheck(relevance, (x, relevance_out), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_second_order_gradient_of_epsilon_matches_the_formula():
    """``R = x * (W^T (r / (W x)))`` for a bias-free dense layer and epsilon -> 0; check ``d sum(R) / d r``."""
    (x,) = _leaves((2, 4))
    layer = torch.nn.Linear(4, 3, bias=False).double()
    relevance_out = torch.randn((2, 3), dtype=F64, requires_grad=True)
    with attach_rules(layer, {"": pr.Epsilon(epsilon=0.0)}):
        (relevance,) = torch.autograd.grad(layer(x), x, relevance_out, create_graph=True)
    (d_relevance_out,) = torch.autograd.grad(relevance.sum(), relevance_out)
    # sum_i x_i sum_j w_ji r_j / z_j = sum_j r_j: the derivative is exactly one (conservation)
    torch.testing.assert_close(d_relevance_out, torch.ones_like(relevance_out), rtol=1e-12, atol=1e-12)


def test_second_order_through_several_layers_uses_plain_gradients_after_the_block():
    """Differentiating relevance w.r.t. the input passes earlier layers: there the plain gradient applies."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Softplus(), torch.nn.Linear(5, 3)).double()
    relevance_out = torch.randn((2, 3), dtype=F64)
    assignment = {"0": pr.Epsilon(epsilon=0.1), "2": pr.Gamma()}

    def relevance(x):
        with attach_rules(model, assignment):
            (rel,) = torch.autograd.grad(model(x), x, relevance_out, create_graph=True)
        return rel

    x = torch.randn((2, 4), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(relevance, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_a_graph_built_inside_the_block_gives_plain_gradients_after_it():
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).double()
    (x,) = _leaves((2, 4))
    with attach_rules(model, {"0": pr.ZPlus(), "1": pr.Pass(), "2": pr.AlphaBeta()}):
        out = model(x)
    (gradient,) = torch.autograd.grad(out.sum(), x)
    (plain,) = torch.autograd.grad(model(x).sum(), x)
    torch.testing.assert_close(gradient, plain, rtol=1e-12, atol=1e-14)
    with attach_rules(model, {"0": pr.ZPlus(), "1": pr.Pass(), "2": pr.AlphaBeta()}):
        (relevance,) = torch.autograd.grad(model(x).sum(), x)
    assert not torch.allclose(relevance, plain)  # inside the block the same graph gives relevance
