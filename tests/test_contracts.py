"""The public contracts between rules, canonizers, the engine and observers, used as a third party would.

* ``Rule.passes_relevance``: a rule declares that it hands relevance through; the engine then skips it.
* ``zplug.engine.mark_identity``: a canonizer declares that a forward it installed is the identity.
* Observers: ``(binding, call, grad_outputs, relevance)``; ``call.key`` is the call's autograd node and
  ``zplug.engine.binding_of`` recognises such nodes in the graph.
* ``Rule.absorption``: a rule splits what it absorbed into stabiliser and bias for the ledger.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar

import attrs
import pytest
import torch
from torch import nn

import zplug
import zplug.rules as pr
from zplug.canonizers import Canonizer, applied_canonizers
from zplug.canonizers._patch import patching
from zplug.engine import attach_rules, binding_of, is_identity, mark_identity
from zplug.errors import RelevanceError
from zplug.rules import Absorption, Rule, parameter, relevance_total

F64 = torch.float64
CALLS: list[str] = []  # rule calls, recorded by the rules below


@attrs.frozen(kw_only=True)
class Through(Rule):
    """A third-party pass-through rule, written from scratch, that declares it."""

    name = "through"
    summary = "relevance through unchanged"
    passes_relevance = True

    def backward(self, call, grad_outputs):
        CALLS.append(call.name)
        return tuple(grad_outputs)


@attrs.frozen(kw_only=True)
class ThroughUndeclared(Rule):
    """The same arithmetic without the declaration: the engine must call it."""

    name = "through_undeclared"
    summary = "relevance through unchanged, not declared"

    def backward(self, call, grad_outputs):
        CALLS.append(call.name)
        return tuple(grad_outputs)


class LoggingPass(pr.Pass):
    """Overrides ``Pass.backward`` without declaring pass-through again: it loses the declaration."""

    def backward(self, call, grad_outputs):
        CALLS.append(call.name)
        return super().backward(call, grad_outputs)


class DeclaredLoggingPass(pr.Pass):
    """Overrides ``backward`` and declares pass-through again."""

    passes_relevance = True

    def backward(self, call, grad_outputs):
        CALLS.append(call.name)
        return super().backward(call, grad_outputs)


def _mlp() -> nn.Sequential:
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 7), nn.Tanh(), nn.Linear(7, 3)).to(F64).eval()


def _relevance(model, rules, x, observers=()):
    inp = x.detach().requires_grad_()
    with attach_rules(model, rules, observers=observers) as bindings:
        out = model(inp)
        (relevance,) = torch.autograd.grad(out, inp, out)
    return relevance, bindings


# -- passes_relevance ------------------------------------------------------------------------------
def test_declared_pass_through_is_skipped_with_the_same_numbers():
    model, x = _mlp(), torch.randn(4, 5, dtype=F64)

    def rules(through):
        return {"0": pr.Epsilon(epsilon=0.1), "1": through, "2": pr.Epsilon(), "3": through, "4": pr.Epsilon()}

    CALLS.clear()
    fast, fast_bindings = _relevance(model, rules(Through()), x)
    assert CALLS == []  # the engine never called the declared rule
    slow, slow_bindings = _relevance(model, rules(ThroughUndeclared()), x)
    assert CALLS == ["3", "1"]
    assert fast_bindings["1"].passes and not slow_bindings["1"].passes
    assert torch.equal(fast, slow)
    builtin, _ = _relevance(model, rules(pr.Pass()), x)
    assert torch.equal(fast, builtin)


def test_an_override_of_backward_does_not_inherit_the_declaration():
    assert pr.Pass.passes_relevance and not Rule.passes_relevance and not pr.Epsilon.passes_relevance
    assert not LoggingPass.passes_relevance and DeclaredLoggingPass.passes_relevance
    model, x = _mlp(), torch.randn(2, 5, dtype=F64)
    CALLS.clear()
    logged, _ = _relevance(model, {"1": LoggingPass(), "3": LoggingPass(), "4": pr.Epsilon()}, x)
    assert CALLS == ["3", "1"]
    CALLS.clear()
    declared, _ = _relevance(model, {"1": DeclaredLoggingPass(), "3": DeclaredLoggingPass(), "4": pr.Epsilon()}, x)
    assert CALLS == []
    assert torch.equal(logged, declared)


def test_observers_see_a_declared_pass_through_rule():
    model, x = _mlp(), torch.randn(2, 5, dtype=F64)
    seen = []
    CALLS.clear()
    _relevance(model, {"1": Through(), "4": pr.Epsilon()}, x, observers=(lambda b, c, g, r: seen.append(b.name),))
    assert seen == ["4", "1"] and CALLS == ["1"]


# -- the identity marker ---------------------------------------------------------------------------
class Scale(nn.Module):
    """Multiplies by a per-feature factor; a canonizer folds it into the Linear layer before it."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.factor = nn.Parameter(torch.rand(features, dtype=F64) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@attrs.frozen(kw_only=True)
class FoldScale(Canonizer):
    """Fold ``layer -> scale`` into ``layer``; the scale's forward becomes the (marked) identity."""

    name: ClassVar[str] = "fold_scale"
    summary: ClassVar[str] = "fold a Scale module into the Linear layer before it"
    layer: str = parameter(doc="the Linear layer", kind="name")
    scale: str = parameter(doc="the Scale module after it", kind="name")

    @contextmanager
    def applied(self, model):
        modules = dict(model.named_modules())
        layer, scale = modules[self.layer], modules[self.scale]
        weight = layer.weight.detach() * scale.factor.detach()[:, None]
        bias = layer.bias.detach() * scale.factor.detach()
        with patching() as stack, zplug.engine.override_params(layer, {"weight": weight, "bias": bias}):
            stack.attribute(layer, "forward", lambda x: nn.functional.linear(x, weight, bias))
            stack.attribute(scale, "forward", mark_identity(lambda x: x))
            yield model


def _scaled_model() -> nn.Sequential:
    torch.manual_seed(11)
    return nn.Sequential(nn.Linear(4, 6), Scale(6), nn.ReLU(), nn.Linear(6, 2)).to(F64).eval()


def test_a_marked_identity_makes_no_autograd_node_and_keeps_the_numbers():
    model, x = _scaled_model(), torch.randn(3, 4, dtype=F64)
    rules = {"0": pr.Epsilon(epsilon=0.01), "1": pr.Pass(), "2": pr.Pass(), "3": pr.Epsilon(epsilon=0.01)}
    t = torch.randn(3, 6, dtype=F64, requires_grad=True)
    with applied_canonizers(model, [FoldScale(layer="0", scale="1")]):
        assert is_identity(model[1].forward)
        with attach_rules(model, rules) as bindings:
            assert bindings["1"].skippable and not bindings["2"].skippable
            assert model[1](t) is t  # the identity itself: no rule node
            assert binding_of(model[2](t).grad_fn) is bindings["2"]
            fast, _ = _relevance(model, rules, x)
        slow, _ = _relevance(model, rules | {"1": ThroughUndeclared()}, x)  # the general path on the same forward
    assert torch.equal(fast, slow)
    # folding is the same as a model with the merged layer
    merged = nn.Sequential(nn.Linear(4, 6), nn.Identity(), nn.ReLU(), nn.Linear(6, 2)).to(F64)
    with torch.no_grad():
        merged[0].weight.copy_(model[0].weight * model[1].factor[:, None])
        merged[0].bias.copy_(model[0].bias * model[1].factor)
        merged[3].load_state_dict(model[3].state_dict())
    reference, _ = _relevance(merged, {"0": pr.Epsilon(epsilon=0.01), "3": pr.Epsilon(epsilon=0.01)}, x)
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-14)
    assert not is_identity(model[1].forward)  # reverted


def test_a_marked_identity_with_another_rule_or_an_observer_still_makes_a_node():
    model = _scaled_model()
    t = torch.randn(3, 6, dtype=F64, requires_grad=True)
    with applied_canonizers(model, [FoldScale(layer="0", scale="1")]):
        with attach_rules(model, {"1": pr.Epsilon()}) as bindings:
            assert not bindings["1"].skippable
            assert binding_of(model[1](t).grad_fn) is bindings["1"]
        with attach_rules(model, {"1": pr.Pass()}, observers=(lambda *a: None,)) as bindings:
            assert binding_of(model[1](t).grad_fn) is bindings["1"]


def test_mark_identity_needs_a_callable_that_takes_attributes():
    def forward(x):
        return x

    assert mark_identity(forward) is forward and is_identity(forward)
    assert not is_identity(lambda x: x)
    method = nn.Identity().forward
    with pytest.raises(TypeError) as info:
        mark_identity(method)
    assert str(info.value) == (
        f"mark_identity: cannot mark {method!r} (it takes no attributes); wrap it in a function: "
        "mark_identity(lambda x: x)"
    )


# -- the observer API ------------------------------------------------------------------------------
class Twice(nn.Module):
    """Calls one Linear layer twice (two calls, two keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.inner(self.act(self.inner(x))))


def _rule_nodes(output: torch.Tensor) -> dict:
    """Walk the autograd graph from ``output``: ``{node: binding}`` for every rule node."""
    found, stack, seen = {}, [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        binding = binding_of(node)
        if binding is not None:
            found[node] = binding
        stack.extend(child for child, _ in node.next_functions)
    return found


def test_an_observer_sees_every_call_with_its_key():
    torch.manual_seed(2)
    model = Twice().to(F64)
    rules = {"inner": pr.Epsilon(epsilon=0.1), "act": pr.Pass(), "head": pr.Epsilon()}
    records = []

    def observer(binding, call, grad_outputs, relevance):
        assert call.binding is binding and call.name == binding.name and call.module is binding.module
        records.append((call.key, binding.name, relevance_total(grad_outputs[0]), relevance_total(relevance[0])))

    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    with attach_rules(model, rules, observers=(observer,)) as bindings:
        out = model(x)
        nodes = _rule_nodes(out)
        assert out.grad_fn in nodes and nodes[out.grad_fn] is bindings["head"]
        (relevance,) = torch.autograd.grad(out, x, out)
    assert {key: name for key, name, *_ in records} == {node: b.name for node, b in nodes.items()}
    assert [name for _, name, *_ in records] == ["head", "inner", "act", "inner"]
    assert len({key for key, *_ in records}) == 4  # "inner" twice: two calls, two keys
    assert records[0][2] == pytest.approx(relevance_total(out))
    # what a call emits is what the call below it receives (all layers have rules)
    for upper, lower in zip(records, records[1:]):
        assert upper[3] == pytest.approx(lower[2], rel=1e-12)
    assert records[-1][3] == pytest.approx(relevance_total(relevance), rel=1e-12)


def test_binding_of_is_none_for_other_nodes():
    x = torch.randn(2, requires_grad=True)
    y = (x * 2).sum()
    assert binding_of(y.grad_fn) is None and binding_of(y.grad_fn.next_functions[0][0]) is None


# -- absorption ------------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class SignedEpsilon(Rule):
    """LRP-epsilon written from scratch: ``R_i = x_i w_ji R_j / (z_j + eps sign(z_j))`` (dense layers)."""

    name = "signed_epsilon"
    summary = "LRP-epsilon, third-party"
    epsilon: float = parameter(0.1, doc="stabiliser", kind="number >= 0", check=pr.non_negative)

    def denominator(self, z):
        return z + self.epsilon * torch.where(z >= 0, 1.0, -1.0).to(z)

    def backward(self, call, grad_outputs):
        (x,), z = call.inputs, call.output
        return (x * ((grad_outputs[0] / self.denominator(z)) @ call.params()["weight"]),)


@attrs.frozen(kw_only=True)
class SplitSignedEpsilon(SignedEpsilon):
    """The same rule, declaring its split: ``R eps sign(z) / d`` to the stabiliser, ``R b / d`` to the bias."""

    name = "split_signed_epsilon"

    def absorption(self, call, grad_outputs, relevance):
        z, r = call.output, grad_outputs[0]
        d = self.denominator(z)
        return Absorption(
            stabilizer=relevance_total(r * (d - z) / d), bias=relevance_total(r * call.params()["bias"] / d)
        )


def test_a_rule_with_absorption_shows_its_split_in_the_ledger():
    model, x = _mlp(), torch.randn(4, 5, dtype=F64)
    rules = {"0": SplitSignedEpsilon(epsilon=0.2), "1": pr.Pass(), "2": SplitSignedEpsilon(), "3": pr.Pass(),
             "4": SplitSignedEpsilon(epsilon=0.3)}  # fmt: skip
    e = zplug.explain(model, x, lambda out: out, mapping=rules, ledger=True)
    last = e.ledger.layer("4")
    y = e.output.detach()
    d = y + 0.3 * torch.where(y >= 0, 1.0, -1.0).to(y)
    assert last.stabilizer == pytest.approx(float((y * 0.3 * torch.where(y >= 0, 1.0, -1.0) / d).sum()), rel=1e-12)
    assert last.bias == pytest.approx(float((y * model[4].bias.detach() / d).sum()), rel=1e-12)
    for name in ("0", "2", "4"):
        entry = e.ledger.layer(name)
        assert entry.stabilizer + entry.bias == pytest.approx(entry.lost, rel=1e-9, abs=1e-12)
    # the built-in epsilon splits the same way (its own absorption)
    builtin = zplug.explain(model, x, lambda out: out, ledger=True, mapping={
        "0": pr.Epsilon(epsilon=0.2), "1": pr.Pass(), "2": pr.Epsilon(epsilon=0.1), "3": pr.Pass(),
        "4": pr.Epsilon(epsilon=0.3)})  # fmt: skip
    for ours, theirs in zip(e.ledger.entries, builtin.ledger.entries):
        assert (ours.name, ours.kind) == (theirs.name, theirs.kind)
        assert ours.relevance_in == pytest.approx(theirs.relevance_in, rel=1e-10)
        if ours.stabilizer is not None:
            assert ours.stabilizer == pytest.approx(theirs.stabilizer, rel=1e-9)
            assert ours.bias == pytest.approx(theirs.bias, rel=1e-6, abs=1e-12)


def test_a_rule_without_absorption_shows_nothing_split():
    model, x = _mlp(), torch.randn(4, 5, dtype=F64)
    rules = {"0": SignedEpsilon(), "1": pr.Pass(), "2": SignedEpsilon(), "3": pr.Pass(), "4": SignedEpsilon()}
    ledger = zplug.explain(model, x, 1, mapping=rules, ledger=True).ledger
    layers = [e for e in ledger.entries if e.kind == "layer"]
    assert [e.name for e in layers] == ["0", "1", "2", "3", "4"]
    assert all(e.stabilizer is None and e.bias is None for e in layers)
    assert abs(ledger.layer("4").lost) > 1e-6  # it absorbed something, just not split
    assert "signed_epsilon(epsilon=0.1)" in str(ledger)


def test_absorption_must_return_an_absorption():
    @attrs.frozen(kw_only=True)
    class Broken(SignedEpsilon):
        name = "broken"

        def absorption(self, call, grad_outputs, relevance):
            return 0.5

    with pytest.raises(RelevanceError) as info:
        zplug.explain(_mlp(), torch.randn(1, 5, dtype=F64), 0, mapping={"4": Broken()}, ledger=True)
    assert str(info.value) == (
        "rule 'broken' on layer '4': absorption() returned float; return a zplug.rules.Absorption or None"
    )
