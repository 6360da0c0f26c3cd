"""The stabilised division is bit for bit Zennit's ``R / (z + eps * sign(z))`` with sign(0) = +1.

zplug computes it in fewer passes (``z + eps * sign(z)`` with a finiteness check that catches
zeros), so these tests pin the exact numbers against Zennit's own ``stabilize`` on values that
stress rounding: magnitudes over many orders, ties with ``eps``, +0.0 and -0.0, and reduced
precision.
"""

from __future__ import annotations

import pytest
import torch
import zennit.core

from zplug.engine.stabilize import apply_stabilizer, divide_stabilized, stabilize

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
EPSILONS = [1e-6, 0.25, 1e-30, 0.0]


def _denominators(dtype: torch.dtype, zeros: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    magnitude = torch.logspace(-12, 3, 997, dtype=torch.float64)
    z = (torch.randn(997, generator=generator, dtype=torch.float64) * magnitude).to(dtype)
    z[::13] = 1e-6  # ties: |z| equal to the stabiliser
    z[1::13] = -1e-6
    if zeros in ("positive", "both"):
        z[::7] = 0.0
    if zeros in ("negative", "both"):
        z[3::11] = -0.0
    return z


def _zennit_divide(relevance: torch.Tensor, epsilon: float, z: torch.Tensor) -> torch.Tensor:
    return relevance / zennit.core.stabilize(z, epsilon)


@pytest.mark.parametrize("zeros", ["none", "positive", "negative", "both"])
@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_divide_stabilized_equals_zennit_bit_for_bit(dtype, epsilon, zeros):
    z = _denominators(dtype, zeros)
    relevance = torch.randn(z.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64).to(dtype)
    with torch.no_grad():  # as inside a rule: the in-buffer fast path
        ours = divide_stabilized(relevance, epsilon, z)
    theirs = _zennit_divide(relevance, epsilon, z)
    assert ours.dtype == theirs.dtype
    # equal_nan: eps = 0 divides by exact zeros in both libraries
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(torch.signbit(ours), torch.signbit(theirs))


@pytest.mark.parametrize("epsilon", EPSILONS)
def test_negative_zero_counts_as_positive(epsilon):
    z = torch.tensor([-0.0, 0.0, -1.0, 1.0])
    expected = torch.tensor([epsilon, epsilon, -1.0 - epsilon, 1.0 + epsilon])
    ones = torch.ones(4)
    with torch.no_grad():
        fast = divide_stabilized(ones, epsilon, z)
    recorded = divide_stabilized(ones, epsilon, z.requires_grad_())
    for result in (fast, recorded.detach()):
        torch.testing.assert_close(result, ones / expected, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(stabilize(z, epsilon), expected, rtol=0, atol=0)


def test_divide_stabilized_leaves_inputs_alone():
    z = _denominators(torch.float32, "both")
    relevance = torch.randn(z.shape)
    z_before, relevance_before = z.clone(), relevance.clone()
    with torch.no_grad():
        divide_stabilized(relevance, 1e-6, z)
    assert torch.equal(z, z_before) and torch.equal(relevance, relevance_before)


def test_divide_stabilized_is_differentiable_under_grad():
    z = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    relevance = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(divide_stabilized(relevance, 0.1, z).sum(), z)
    denominator = z.detach() + 0.1 * torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(grad, -relevance / denominator**2)


def test_callable_stabilizer_is_applied_as_given():
    z = torch.tensor([0.0, -2.0, 3.0])
    assert torch.equal(apply_stabilizer(lambda t: t * 2 + 1, z), z * 2 + 1)
