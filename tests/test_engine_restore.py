"""``attach_rules`` leaves the model exactly as it found it, also when the block is interrupted.

Faults are injected at random points (a seeded choice per case): a module's forward raises, a
rule's backward raises, an observer raises, or the ``with`` body raises between forward and
backward; the exception is an ordinary error or ``KeyboardInterrupt``. Afterwards no patched
attribute and no hook remains, every parameter and buffer is the same tensor with the same
values and version, and the state dict has the same keys.
"""

from __future__ import annotations

import random
from collections import OrderedDict

import attrs
import pytest
import torch

import zplug.rules as pr
from zplug.engine import attach_rules
from zplug.errors import ModelMismatchError
from zplug.layers import Sum
from zplug.rules.base import Rule

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


class InjectedError(Exception):
    """The error the fault injection raises."""


class Trap(torch.nn.Module):
    """Identity that raises ``armed`` when it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.armed: type[BaseException] | None = None

    def forward(self, x):
        if self.armed is not None:
            raise self.armed("trap in forward")
        return x


@attrs.frozen(kw_only=True)
class Exploding(Rule):
    """A rule whose backward raises."""

    name = "exploding"
    error: type = attrs.field()

    def backward(self, call, grad_outputs):
        """Raise the configured error."""
        raise self.error(f"rule on '{call.name}' failed")


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.relu = torch.nn.ReLU(inplace=True)
        self.trap1 = Trap()
        self.pool = torch.nn.AvgPool2d(2)
        self.branch = torch.nn.Conv2d(4, 4, 1, bias=False)
        self.add = Sum()
        self.flatten = torch.nn.Flatten()
        self.fc = torch.nn.Linear(4 * 2 * 2, 3)
        self.trap2 = Trap()

    def forward(self, x):
        h = self.trap1(self.relu(self.bn(self.conv(x))))
        h = self.pool(h)
        h = self.add(h, self.branch(h))
        return self.trap2(self.fc(self.flatten(h)))


def _make_model():
    model = Net().double().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    # state the engine must leave alone: a user hook, and an instance forward set by someone else
    model.fc.register_forward_hook(lambda module, args, out: None)
    model.conv.register_forward_pre_hook(lambda module, args: None)
    model.pool.forward = model.pool.forward
    return model


ASSIGNMENT = {
    "conv": pr.Gamma(),
    "bn": pr.Pass(),
    "relu": pr.Pass(),
    "trap1": pr.Pass(),
    "pool": pr.Norm(),
    "branch": pr.ZPlus(),
    "add": pr.Norm(),
    "fc": pr.Epsilon(),
    "trap2": pr.Pass(),
}


def _snapshot(model):
    modules = {}
    for name, module in model.named_modules():
        modules[name] = {
            "dict_keys": sorted(module.__dict__),
            "forward": module.__dict__.get("forward"),
            "inplace": module.__dict__.get("inplace"),
            "training": module.training,
            "hooks": {attr: dict(getattr(module, attr)) for attr in HOOK_DICTS},
        }
    tensors = {
        name: (tensor, tensor.detach().clone(), tensor.data_ptr(), tensor._version, tensor.requires_grad)
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
    }
    return modules, tensors, list(model.state_dict())


def _assert_restored(model, snapshot):
    modules, tensors, state_keys = snapshot
    now_modules, _, now_keys = _snapshot(model)
    assert now_keys == state_keys
    for name, before in modules.items():
        now = now_modules[name]
        assert now["dict_keys"] == before["dict_keys"], name
        assert now["forward"] is before["forward"], name
        assert now["inplace"] == before["inplace"], name
        assert now["training"] == before["training"], name
        for attr in HOOK_DICTS:
            assert now["hooks"][attr].keys() == before["hooks"][attr].keys(), (name, attr)
            for key, hook in before["hooks"][attr].items():
                assert now["hooks"][attr][key] is hook, (name, attr)
    current = dict([*model.named_parameters(), *model.named_buffers()])
    assert current.keys() == tensors.keys()
    for name, (tensor, values, pointer, version, requires_grad) in tensors.items():
        assert current[name] is tensor, name
        assert torch.equal(tensor, values), name
        assert tensor.data_ptr() == pointer, name
        assert tensor._version == version, name
        assert tensor.requires_grad == requires_grad, name
        assert tensor.grad is None, name


def _plain_gradient(model, x):
    inp = x.clone().requires_grad_()
    out = model(inp)
    return out.detach(), torch.autograd.grad(out.sum(), inp)[0]


def _attribute(model, x, assignment, observers=(), body_fault=None):
    with attach_rules(model, assignment, observers=observers):
        for name in assignment:
            assert "forward" in model.get_submodule(name).__dict__  # patched while attached
        assert model.relu.inplace is False
        inp = x.clone().requires_grad_()
        out = model(inp)
        if body_fault is not None:
            raise body_fault("fault in the with body")
        (relevance,) = torch.autograd.grad(out, inp, torch.ones_like(out))
    return relevance


def test_normal_exit_restores_everything():
    model = _make_model()
    x = torch.randn((2, 2, 4, 4), dtype=torch.float64)
    before = _snapshot(model)
    plain = _plain_gradient(model, x)
    relevance = _attribute(model, x, ASSIGNMENT)
    assert torch.isfinite(relevance).all()
    _assert_restored(model, before)
    after = _plain_gradient(model, x)
    assert torch.equal(after[0], plain[0]) and torch.equal(after[1], plain[1])


def _fault_plan(seed):
    """Pick a fault site and an exception type at random (seeded): (kind, where, error)."""
    rng = random.Random(seed)
    error = rng.choice([InjectedError, KeyboardInterrupt])
    kind = rng.choice(["forward", "backward", "observer", "body"])
    where = {
        "forward": rng.choice(["trap1", "trap2"]),
        "backward": rng.choice(sorted(ASSIGNMENT)),
        "observer": rng.choice(sorted(ASSIGNMENT)),
        "body": None,
    }[kind]
    return kind, where, error


@pytest.mark.parametrize("seed", range(16))
def test_interrupted_block_restores_everything(seed):
    kind, where, error = _fault_plan(seed)
    model = _make_model()
    x = torch.randn((2, 2, 4, 4), dtype=torch.float64)
    before = _snapshot(model)
    plain = _plain_gradient(model, x)
    assignment = dict(ASSIGNMENT)
    observers = ()
    body_fault = None
    if kind == "forward":
        model.get_submodule(where).armed = error
    elif kind == "backward":
        assignment[where] = Exploding(error=error)
    elif kind == "observer":

        def observer(binding, call, grad_outputs, relevance):
            if binding.name == where:
                raise error("observer failed")

        observers = (observer,)
    else:
        body_fault = error

    with pytest.raises(error):
        _attribute(model, x, assignment, observers=observers, body_fault=body_fault)

    if kind == "forward":
        model.get_submodule(where).armed = None
    _assert_restored(model, before)
    after = _plain_gradient(model, x)
    assert torch.equal(after[0], plain[0]) and torch.equal(after[1], plain[1])


def test_every_fault_kind_is_drawn():
    plans = [_fault_plan(seed) for seed in range(16)]
    assert {kind for kind, _, _ in plans} == {"forward", "backward", "observer", "body"}
    assert {error for _, _, error in plans} == {InjectedError, KeyboardInterrupt}


def test_unknown_module_name_is_a_model_mismatch():
    model = torch.nn.Sequential(OrderedDict(fc1=torch.nn.Linear(2, 2), act=torch.nn.ReLU()))
    before = _snapshot(model)
    with pytest.raises(ModelMismatchError) as info:
        with attach_rules(model, {"fc1": pr.Epsilon(), "fc2": pr.Epsilon(), "act": pr.Pass()}):
            pass
    assert str(info.value) == "model Sequential: unknown module 'fc2' (did you mean 'fc1'? known: act, fc1)"
    _assert_restored(model, before)


def test_unknown_module_name_without_close_match():
    model = Net()
    with pytest.raises(ModelMismatchError) as info:
        with attach_rules(model, {"features.0": pr.Epsilon()}):
            pass
    assert str(info.value) == (
        "model Net: unknown module 'features.0' "
        "(known: add, bn, branch, conv, fc, flatten, pool, relu, trap1, trap2)"
    )


def test_shared_module_with_two_different_rules_is_refused():
    shared = torch.nn.Linear(2, 2)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared)
    before = _snapshot(model)
    with pytest.raises(ModelMismatchError) as info:
        with attach_rules(model, {"0": pr.Epsilon(), "2": pr.ZPlus()}):
            pass
    assert str(info.value) == (
        "modules '0' and '2' are the same object but were given different rules (epsilon and zplus); "
        "give both the same rule"
    )
    _assert_restored(model, before)


def test_shared_module_with_the_same_rule_is_bound_once():
    shared = torch.nn.Linear(2, 2)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared)
    before = _snapshot(model)
    with attach_rules(model, {"0": pr.Epsilon(), "2": pr.Epsilon()}) as bindings:
        assert list(bindings) == ["0"]
        assert shared.__dict__["forward"] is bindings["0"]
    _assert_restored(model, before)
