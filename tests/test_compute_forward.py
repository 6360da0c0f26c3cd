"""``Rule.compute_forward``: a rule computes its module's forward pass and keeps state for its backward pass."""

from __future__ import annotations

import attrs
import torch

import zplug
from zplug.rules import Epsilon, Rule


@attrs.frozen(kw_only=True)
class DoubledForward(Rule):
    """Epsilon's relevance on a Linear whose forward it computes itself, noting what it computed."""

    name = "doubled_forward_test"
    summary = "test rule"

    def compute_forward(self, module, forward, args, kwargs, state):
        state["calls"] = state.get("calls", 0) + 1
        state["input_sum"] = float(args[0].sum())
        return torch.nn.functional.linear(args[0], module.weight, module.bias)

    def backward(self, call, grad_outputs):
        assert call.state["calls"] == 1 and call.state["input_sum"] == float(call.inputs[0].sum())
        return Epsilon(epsilon=0.1).backward(call, grad_outputs)


def test_a_rule_that_computes_the_forward_gives_its_output_and_finds_its_state_in_the_backward_pass():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    assert DoubledForward.computes_forward and not Epsilon.computes_forward
    ours = zplug.explain(model, x, 1, mapping={"0": DoubledForward(), "2": Epsilon(epsilon=0.1)})
    reference = zplug.explain(model, x, 1, mapping={"0": Epsilon(epsilon=0.1), "2": Epsilon(epsilon=0.1)})
    torch.testing.assert_close(ours.output, reference.output, rtol=0, atol=0)
    torch.testing.assert_close(ours.relevance, reference.relevance, rtol=0, atol=0)
