"""The engine's shortcuts for ``pass`` rules give exactly the numbers of the general path.

A ``pass`` rule on a one-tensor layer hands the relevance through without building a
``LayerCall``; on a BatchNorm that a canonizer turned into the identity, no autograd node is
made at all (the identity's gradient already passes the relevance). Both must be invisible:
same relevance bit for bit, observers (the ledger) still see every layer, and plain gradients
after the block.
"""

from __future__ import annotations

import torch

import zplug.rules as pr
from zplug.canonizers import MergeBatchNorm, applied_canonizers
from zplug.engine import attach_rules

F64 = torch.float64


class GeneralPass(pr.Pass):
    """The same rule with its own ``backward``: the engine cannot take the shortcut for it."""

    def backward(self, call, grad_outputs):
        return super().backward(call, grad_outputs)


def _model() -> torch.nn.Sequential:
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(6, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 3),
    ).to(F64)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _rules(pass_rule: pr.Pass) -> dict[str, pr.Rule]:
    return {
        "0": pr.ZPlus(), "1": pass_rule, "2": pass_rule, "3": pr.Epsilon(epsilon=0.01), "4": pass_rule,
        "5": pass_rule, "7": pr.Epsilon(),
    }  # fmt: skip


def _relevance(model, rules, x, observers=()):
    inp = x.detach().requires_grad_()
    with applied_canonizers(model, [MergeBatchNorm()]), attach_rules(model, rules, observers=observers) as bindings:
        out = model(inp)
        (relevance,) = torch.autograd.grad(out, inp, torch.eye(3, dtype=F64)[[0, 2]] * out)
    return relevance, bindings


def test_shortcut_and_general_pass_give_identical_relevance():
    model, x = _model(), torch.randn(2, 3, 6, 6, dtype=F64)
    fast, fast_bindings = _relevance(model, _rules(pr.Pass()), x)
    general, general_bindings = _relevance(model, _rules(GeneralPass()), x)
    assert all(fast_bindings[name].passes for name in ("1", "2", "4", "5"))
    assert not any(general_bindings[name].passes for name in ("1", "2", "4", "5"))
    assert fast_bindings["1"].skippable and not fast_bindings["2"].skippable  # merged BatchNorm vs ReLU
    assert torch.equal(fast, general)


def test_merged_batchnorm_with_pass_makes_no_autograd_node():
    model = _model()
    t = torch.randn(2, 6, 4, 4, dtype=F64, requires_grad=True)
    with applied_canonizers(model, [MergeBatchNorm()]), attach_rules(model, _rules(pr.Pass())):
        assert model[1](t) is t  # the identity itself: its gradient passes the relevance unchanged
        assert model[2](t).grad_fn is not None and type(model[2](t).grad_fn).__name__ == "_RuleFunctionBackward"


def test_observers_still_see_every_pass_layer():
    model, x = _model(), torch.randn(2, 3, 6, 6, dtype=F64)
    seen: list[tuple[str, torch.Tensor]] = []

    def observer(binding, call, grad_outputs, relevance):
        seen.append((binding.name, relevance[0]))

    observed, _ = _relevance(model, _rules(pr.Pass()), x, observers=(observer,))
    plain, _ = _relevance(model, _rules(pr.Pass()), x)
    assert [name for name, _ in seen] == ["7", "5", "4", "3", "2", "1", "0"]
    assert torch.equal(observed, plain)


def test_pass_shortcut_gives_the_plain_gradient_after_the_block():
    model = _model()
    x = torch.randn(2, 3, 6, 6, dtype=F64, requires_grad=True)
    with applied_canonizers(model, [MergeBatchNorm()]), attach_rules(model, {"2": pr.Pass(), "5": pr.Pass()}):
        out = model(x)
        (inside,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
    (after,) = torch.autograd.grad(out.sum(), x)  # the same graph, after the block: ReLU masks apply again
    (plain,) = torch.autograd.grad(model(x).sum(), x)
    torch.testing.assert_close(after, plain, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(inside, plain)


# -- layers that receive no relevance -------------------------------------------------------------------
CALLS: list[tuple[str, float]] = []


class CountingEpsilon(pr.Epsilon):
    """Epsilon that records each call and the total relevance it received."""

    def backward(self, call, grad_outputs):
        CALLS.append((call.name, float(sum(g.abs().sum() for g in grad_outputs))))
        return super().backward(call, grad_outputs)


class _Outer(torch.nn.Module):
    """``a(x) b(x)^T``: CP-LRP's product gives everything to ``b`` (the value), nothing to ``a``."""

    def __init__(self) -> None:
        super().__init__()
        from zplug.layers import MatMul

        torch.manual_seed(5)
        self.a = torch.nn.Linear(3, 4).double()
        self.b = torch.nn.Linear(3, 4).double()
        self.product = MatMul(value=1)

    def forward(self, x):
        return self.product(self.a(x).unsqueeze(-1), self.b(x).unsqueeze(-2))


def _outer_relevance(observers=()):
    model = _Outer()
    rules = {"a": CountingEpsilon(epsilon=1e-9), "b": CountingEpsilon(epsilon=1e-9),
             "product": pr.Product(epsilon=1e-9, to="value")}
    x = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(6)).requires_grad_()
    CALLS.clear()
    with attach_rules(model, rules, observers=observers):
        out = model(x)
        (relevance,) = torch.autograd.grad(out, x, out.detach())
    return relevance, list(CALLS)


def test_a_layer_that_receives_no_relevance_is_not_computed_unless_observed():
    relevance, calls = _outer_relevance()
    assert [name for name, _ in calls] == ["b"]  # no transposed product on zeros for 'a'
    seen = []
    observed, observed_calls = _outer_relevance(observers=(lambda binding, *rest: seen.append(binding.name),))
    assert sorted(name for name, _ in observed_calls) == ["a", "b"]  # the ledger's view: every layer, with zeros
    assert dict(observed_calls)["a"] == 0.0
    assert sorted(seen) == ["a", "b", "product"]
    assert torch.equal(relevance, observed)  # the same numbers either way
