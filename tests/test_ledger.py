"""The conservation ledger: every bit of relevance accounted for, layer by layer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

import zplug
from zplug.rules import Epsilon, Norm, Pass, ZPlus

_spec = importlib.util.spec_from_file_location("attr_models", Path(__file__).with_name("test_attributors_models.py"))
models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(models)


def check_identity(ledger, rel=1e-5):
    """output = input + absorbed + leaked, and each layer's split adds up."""
    assert ledger.output == pytest.approx(ledger.input + ledger.absorbed + ledger.leaked, rel=rel, abs=1e-6)
    for entry in ledger.entries:
        if entry.stabilizer is not None:
            assert entry.stabilizer + entry.bias == pytest.approx(entry.lost, rel=1e-9, abs=1e-12)


def test_mlp_epsilon_layers_absorb_exactly_bias_and_stabiliser():
    model, x = models.mlp(), torch.randn(4, 6)
    rules = {"0": Epsilon(epsilon=0.1), "1": Pass(), "2": Epsilon(epsilon=0.1), "3": Pass(), "4": Epsilon(epsilon=0.1)}
    e = zplug.explain(model, x, lambda out: out, mapping=rules, ledger=True)
    ledger = e.ledger
    assert [entry.name for entry in ledger.entries] == ["0", "1", "2", "3", "4"]
    assert ledger.output == pytest.approx(float(e.output.double().sum()))
    assert ledger.input == pytest.approx(float(e.relevance.double().sum()))
    check_identity(ledger)
    assert ledger.leaks() == [] or all(abs(leak.lost) < 1e-6 for leak in ledger.leaks())
    # layer 4 receives the output itself: its stabiliser share is sum(y * eps / (|y| + eps)) by hand
    y = e.output.double()
    last = ledger.layer("4")
    assert last.relevance_in == pytest.approx(float(y.sum()))
    assert last.stabilizer == pytest.approx(float((y * 0.1 * y.sign() / (y + 0.1 * y.sign())).sum()), rel=1e-5)
    bias = model[4].bias.detach().double()
    assert last.bias == pytest.approx(float((y * bias / (y + 0.1 * y.sign())).sum()), rel=1e-4)
    # between consecutive layers nothing is lost: what a layer emits, the one below receives
    for upper, lower in zip(ledger.entries[1:], ledger.entries):
        assert upper.relevance_out == pytest.approx(lower.relevance_in, rel=1e-6)
    table = str(ledger)
    assert table.splitlines()[0].split() == ["layer", "rule", "R", "in", "R", "out", "absorbed", "stabiliser", "bias",
                                             "leaked"]
    assert "epsilon(epsilon=0.1)" in table and "residual" in table.splitlines()[-1]


def test_mlp_with_zero_bias_and_tiny_epsilon_conserves():
    model, x = models.mlp(), torch.randn(3, 6)
    model = model.double()
    for layer in (model[0], model[2], model[4]):
        nn.init.zeros_(layer.bias)
    rules = {n: Epsilon(epsilon=1e-12) for n in ("0", "2", "4")} | {"1": Pass(), "3": Pass()}
    ledger = zplug.explain(model, x.double(), 1, mapping=rules, ledger=True).ledger
    assert ledger.input == pytest.approx(ledger.output, rel=1e-8)
    assert abs(ledger.absorbed) < 1e-8 and abs(ledger.leaked) < 1e-8


def test_unhooked_nonlinearity_shows_its_leak():
    model, x = models.mlp(nn.Tanh), torch.randn(4, 6)
    rules = {"0": Epsilon(), "2": Epsilon(), "3": Pass(), "4": Epsilon()}  # "1" (Tanh) has no rule
    ledger = zplug.explain(model, x, 0, mapping=rules, ledger=True).ledger
    check_identity(ledger)
    assert [(e.kind, e.name) for e in ledger.entries] == [
        ("layer", "0"), ("leak", "1 (Tanh)"), ("layer", "2"), ("layer", "3"), ("layer", "4")
    ]
    leak = ledger.leaks()[0]
    assert leak.relevance_in == pytest.approx(ledger.layer("2").relevance_out)
    assert leak.relevance_out == pytest.approx(ledger.layer("0").relevance_in)
    assert abs(leak.lost) > 1e-3  # the tanh derivative rescales relevance
    assert "1 (Tanh)" in str(ledger) and "(no rule)" in str(ledger)


def test_cnn_with_a_preset_accounts_for_every_layer():
    model, x = models.cnn(), torch.rand(2, 3, 8, 8)
    e = zplug.explain(model, x, lambda out: out * torch.eye(4)[[1, 2]], preset="epsilon_plus", ledger=True)
    ledger = e.ledger
    check_identity(ledger)
    names = [entry.name for entry in ledger.entries if entry.kind == "layer"]
    assert names == ["0", "1", "3", "4", "6"]  # max-pool and flatten keep the plain gradient
    assert all(abs(leak.lost) < 1e-5 * abs(ledger.output) for leak in ledger.leaks())  # max-pool routes exactly
    assert ledger.layer("0").rule == "zplus(stabilizer=1e-06)" and ledger.layer("0").stabilizer is None


@pytest.mark.parametrize("functional_add", [False, True])
def test_resnet_like_model(functional_add):
    model, x = models.ResNetLike(functional_add), torch.rand(2, 3, 8, 8)
    rules = {"stem": ZPlus(), "relu": Pass(), "fc": Epsilon(), "pool": Norm()}
    for b in ("block1", "block2"):
        rules |= {f"{b}.conv1": ZPlus(), f"{b}.bn": Pass(), f"{b}.relu1": Pass(), f"{b}.conv2": ZPlus(),
                  f"{b}.relu2": Pass()}
        if not functional_add:
            rules[f"{b}.add"] = Norm()
    ledger = zplug.explain(model, x, 2, mapping=rules, ledger=True).ledger
    check_identity(ledger, rel=1e-4)
    leaks = [leak for leak in ledger.leaks() if abs(leak.lost) > 1e-6]
    if functional_add:
        # the un-ruled "+" hands the full relevance to both summands: relevance is created
        assert [leak.name for leak in leaks] == ["add", "add"]
        assert all(leak.lost < 0 for leak in leaks)
    else:
        assert leaks == []
        assert ledger.layer("block1.add").stabilizer is not None


def test_gradient_without_rules_is_one_leak_from_output_to_input():
    model, x = models.mlp(nn.Tanh), torch.randn(2, 6)
    e = zplug.explain(model, x, 0, ledger=True)
    assert [entry.kind for entry in e.ledger.entries] == ["leak"]
    assert e.ledger.entries[0].lost == pytest.approx(1.0 * 2 - float(e.relevance.sum()), rel=1e-5)
    check_identity(e.ledger)


def test_no_observers_or_hooks_without_a_ledger():
    seen = []

    class Spy:
        def applied(self, model, observers=()):
            seen.append(tuple(observers))
            return zplug.attach_rules(model, {"0": Epsilon()}, observers=tuple(observers))

    model = models.mlp()
    assert zplug.explain(model, torch.randn(1, 6), mapping=Spy()).ledger is None
    zplug.explain(model, torch.randn(1, 6), mapping=Spy(), ledger=True)
    assert seen[0] == () and len(seen[1]) == 1
    assert all(not m._forward_hooks for m in model.modules())


def test_ledger_needs_the_gradient_attributor():
    with pytest.raises(zplug.SpecError) as info:
        zplug.explain(models.mlp(), torch.randn(1, 6), attributor="smoothgrad", ledger=True)
    assert str(info.value) == "the ledger accounts for one backward pass: use attributor 'gradient' (got 'smoothgrad')"
