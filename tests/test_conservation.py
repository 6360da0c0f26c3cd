"""Bias-free networks conserve relevance: the input relevance sums to the output relevance.

zennit.md §11 gives the per-neuron identity ``sum_i R_{i<-j} = R_j N_j / stab(D_j)``: a rule
conserves a neuron's relevance when the part ``N_j`` of its denominator that comes from the
inputs is the whole denominator ``D_j`` and the stabiliser is negligible. The networks below
have no biases and every stabiliser is 1e-12, so each rule conserves exactly as long as its
denominators are not zero; how each case makes sure of that is said next to it.
"""

from __future__ import annotations

import pytest
import torch

import zplug.rules as pr
from zplug.engine import attach_rules
from zplug.layers import Sum

TINY = 1e-12


class ResidualConvNet(torch.nn.Module):
    """Conv -> AvgPool -> ReLU -> two conv branches added by ``Sum`` -> ReLU -> dense layers.

    The average pool sits before the ReLU, so no pooling window is all zeros (a zero window
    would drop relevance under the input-independent rules flat and wsquare, zennit.md §11).
    z+ and alpha-beta need z+ != 0 and z- != 0 wherever relevance arrives: every output sees at
    least 12 inputs (conv1's corners) and the layers after a ReLU at least 32, so with the fixed
    seed of conftest.py every output has inputs with both signs of contribution.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.pool = torch.nn.AvgPool2d(2)
        self.relu1 = torch.nn.ReLU()
        self.branch_a = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.branch_b = torch.nn.Conv2d(8, 8, 3, padding=1, dilation=1, bias=False)
        self.add = Sum()
        self.relu2 = torch.nn.ReLU()
        self.flatten = torch.nn.Flatten()
        self.fc1 = torch.nn.Linear(8 * 4 * 4, 32, bias=False)
        self.relu3 = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(32, 4, bias=False)

    def forward(self, x):
        h = self.relu1(self.pool(self.conv1(x)))
        h = self.relu2(self.add(self.branch_a(h), self.branch_b(h)))
        return self.fc2(self.relu3(self.fc1(self.flatten(h))))


class StackedSumNet(torch.nn.Module):
    """1-d convolution, a transposed convolution, Zennit's stacked ``Sum``, a pool and a dense head.

    The transposed convolution sees the signed convolution output (no exact zeros), and every
    output of both convolutions sees at least 12 inputs, so z+ and z- are non-zero wherever
    relevance (of either sign, coming through the sum) arrives; the pool sits before the ReLU.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(8, 12, 3, padding=1, bias=False)
        self.up = torch.nn.ConvTranspose1d(12, 12, 4, stride=2, padding=1, bias=False)
        self.add = Sum(dim=-1)
        self.pool = torch.nn.AdaptiveAvgPool1d(8)
        self.relu = torch.nn.ReLU()
        self.fc = torch.nn.Linear(12 * 8, 3, bias=False)

    def forward(self, x):
        h = self.conv(x)
        skip = torch.nn.functional.interpolate(h, size=16)  # un-hooked, copies each entry twice: conservative
        h = self.pool(self.add(torch.stack([self.up(h), skip], dim=-1)))
        return self.fc(self.relu(h).flatten(1))


def _mlp():
    return torch.nn.Sequential(
        torch.nn.Linear(10, 32, bias=False),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32, bias=False),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 4, bias=False),
    )


NETWORKS = {
    "residual_conv": (ResidualConvNet, (2, 3, 8, 8)),
    "stacked_sum": (StackedSumNet, (2, 8, 8)),
    "mlp": (_mlp, (3, 10)),
}

AFFINE = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
PROPORTIONAL = (torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool1d, Sum)

# The rule for every dense and convolution layer. Pass goes on ReLUs, norm on pools and sums.
RULES = {
    # epsilon: conservative when the bias is zero and epsilon -> 0 (no z is exactly 0 for random data)
    "epsilon": pr.Epsilon(epsilon=TINY),
    # zplus: conservative without bias as long as z+ != 0 (fan-ins above)
    "zplus": pr.ZPlus(stabilizer=TINY),
    # alpha-beta: needs z+ != 0 and z- != 0 (fan-ins above; signed input for the first layer)
    "alpha2_beta1": pr.AlphaBeta(alpha=2.0, beta=1.0, stabilizer=TINY),
    "alpha1_beta0": pr.AlphaBeta(alpha=1.0, beta=0.0, stabilizer=TINY),
    # gamma: needs z != 0 where relevance arrives; a neuron with z == 0 has a zero output, and
    # the x-proportional rules above it give it no relevance
    "gamma": pr.Gamma(gamma=0.25, stabilizer=TINY),
    # zbox: always conservative (the bounds enclose every activation, so no denominator is 0)
    "zbox": pr.ZBox(low=-100.0, high=100.0, stabilizer=TINY),
    # flat and wsquare: input-independent and always conservative without bias
    "flat": pr.Flat(stabilizer=TINY),
    "wsquare": pr.WSquare(stabilizer=TINY),
    # norm also on dense and convolution layers: the same proportional split as epsilon
    "norm": pr.Norm(stabilizer=TINY),
}


def _assignment(model, rule):
    assignment = {}
    for name, module in model.named_modules():
        if isinstance(module, AFFINE):
            assignment[name] = rule
        elif isinstance(module, PROPORTIONAL):
            assignment[name] = pr.Norm(stabilizer=TINY)
        elif isinstance(module, torch.nn.ReLU):
            assignment[name] = pr.Pass()
    return assignment


def _input_relevance(model, rule, x, relevance_out=None, observers=()):
    with attach_rules(model, _assignment(model, rule), observers=observers):
        inp = x.clone().requires_grad_()
        out = model(inp)
        if relevance_out is None:
            relevance_out = torch.rand_like(out)
        (relevance,) = torch.autograd.grad(out, inp, relevance_out)
    return relevance, relevance_out


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("rule", RULES)
def test_bias_free_network_conserves_relevance(rule, network):
    make, shape = NETWORKS[network]
    model = make().double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    ledger = []
    relevance, relevance_out = _input_relevance(
        model, RULES[rule], x, observers=(lambda binding, call, grads, rel: ledger.append(binding.name),)
    )
    assert ledger, "no rule was applied"
    total_in, total_out = relevance.sum().item(), relevance_out.sum().item()
    assert abs(total_in - total_out) <= 1e-6 * abs(total_out), (total_in, total_out)


@pytest.mark.parametrize("rule", ["epsilon", "zplus", "gamma", "norm"])
def test_conservation_per_sample(rule):
    model = ResidualConvNet().double().eval()
    x = torch.randn((3, 3, 8, 8), dtype=torch.float64)
    relevance, relevance_out = _input_relevance(model, RULES[rule], x)
    torch.testing.assert_close(relevance.sum((1, 2, 3)), relevance_out.sum(1), rtol=1e-6, atol=0)


def test_float32_network_conserves_to_float32_precision():
    model = ResidualConvNet().eval()
    x = torch.randn((2, 3, 8, 8))
    relevance, relevance_out = _input_relevance(model, pr.Epsilon(epsilon=1e-9), x)
    assert abs(relevance.sum().item() - relevance_out.sum().item()) <= 1e-4 * relevance_out.sum().item()


def test_bias_absorbs_relevance_unless_zeroed():
    """The counter-check: with biases, epsilon loses relevance; ``zero_params="bias"`` restores it."""
    layer = torch.nn.Linear(6, 4).double()
    with torch.no_grad():
        layer.bias.fill_(2.0)
    x = torch.randn((5, 6), dtype=torch.float64)
    for zero_params, conserved in (((), False), ("bias", True)):
        rule = pr.Epsilon(epsilon=TINY, zero_params=zero_params)
        with attach_rules(layer, {"": rule}):
            inp = x.clone().requires_grad_()
            out = layer(inp)
            relevance_out = torch.rand_like(out)
            (relevance,) = torch.autograd.grad(out, inp, relevance_out)
        difference = abs(relevance.sum().item() - relevance_out.sum().item())
        assert (difference <= 1e-9 * relevance_out.sum().item()) == conserved, (zero_params, difference)


def test_alpha_beta_without_negative_contributions_scales_by_alpha():
    """zennit.md §11: where z- == 0 the negative term vanishes and the neuron passes alpha * R_j."""
    layer = torch.nn.Linear(5, 3, bias=False).double()
    with torch.no_grad():
        layer.weight.abs_()
    x = torch.rand((4, 5), dtype=torch.float64) + 0.1  # x > 0 and W > 0: z+ > 0, z- == 0
    with attach_rules(layer, {"": pr.AlphaBeta(alpha=2.0, beta=1.0, stabilizer=TINY)}):
        inp = x.clone().requires_grad_()
        out = layer(inp)
        relevance_out = torch.rand_like(out)
        (relevance,) = torch.autograd.grad(out, inp, relevance_out)
    torch.testing.assert_close(relevance.sum(), 2.0 * relevance_out.sum(), rtol=1e-9, atol=0)
