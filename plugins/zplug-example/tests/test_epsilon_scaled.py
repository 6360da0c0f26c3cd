"""The epsilon_scaled rule: its formula by hand, its scale invariance, its use by name."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from importlib.resources import files

import pytest
import torch
import zplug_example.plugin
from zplug_example import EpsilonScaled

import zplug
from zplug.errors import SpecError
from zplug.registry import PluginRegistry, set_default_registry
from zplug.rules import Epsilon, Pass, make_rule, rule

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def relevance(model, x, rules, relevance_out=None):
    """Relevance of ``x`` with ``rules`` ({module name: rule}) attached, starting from ``relevance_out``."""
    x = x.clone().requires_grad_(True)
    with zplug.attach_rules(model, rules):
        y = model(x)
        (r,) = torch.autograd.grad(y, x, torch.ones_like(y) if relevance_out is None else relevance_out)
    return r


def test_linear_matches_hand_computation():
    layer = torch.nn.Linear(3, 2).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]]))
        layer.bias.copy_(torch.tensor([0.1, -0.3]))
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -0.5, 2.0]], dtype=torch.float64)
    r_out = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
    eps = 0.1

    expected = torch.zeros_like(x)
    w, b = layer.weight.detach(), layer.bias.detach()
    for n in range(2):
        z = [sum(w[j, i] * x[n, i] for i in range(3)) + b[j] for j in range(2)]
        rms = (sum(zj**2 for zj in z) / 2) ** 0.5
        for i in range(3):
            expected[n, i] = sum(
                x[n, i] * w[j, i] * r_out[n, j] / (z[j] + eps * rms * (1.0 if z[j] >= 0 else -1.0)) for j in range(2)
            )

    got = relevance(layer, x, {"": EpsilonScaled(epsilon=eps)}, r_out)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_equals_builtin_epsilon_with_a_norm_scaled_stabilizer():
    conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    scaled = relevance(conv, x, {"": EpsilonScaled(epsilon=0.05)})
    builtin = relevance(conv, x, {"": Epsilon(epsilon=lambda z: zplug.stabilize(z, 0.05, norm_scale=True))})
    torch.testing.assert_close(scaled, builtin, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("factor", [1e-3, 7.0])
def test_relevance_does_not_depend_on_the_layer_scale(factor):
    conv = torch.nn.Conv2d(2, 3, 3).double()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    before = relevance(conv, x, {"": EpsilonScaled(epsilon=0.1)})
    with torch.no_grad():
        conv.weight.mul_(factor)
        conv.bias.mul_(factor)
    after = relevance(conv, x, {"": EpsilonScaled(epsilon=0.1)})
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-12)
    # plain epsilon is not scale invariant: the same check fails for it
    plain_before = relevance(conv, x, {"": Epsilon(epsilon=0.1)})
    with torch.no_grad():
        conv.weight.div_(factor)
        conv.bias.div_(factor)
    plain_after = relevance(conv, x, {"": Epsilon(epsilon=0.1)})
    assert not torch.allclose(plain_after, plain_before, rtol=1e-6)


def test_a_sample_with_all_outputs_zero_passes_no_relevance():
    layer = torch.nn.Linear(2, 2, bias=False).double()
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0]], dtype=torch.float64)
    got = relevance(layer, x, {"": EpsilonScaled(epsilon=0.1)})
    assert torch.isfinite(got).all()
    assert torch.equal(got[0], torch.zeros(2, dtype=torch.float64))
    assert got[1].abs().sum() > 0


def test_epsilon_must_not_be_negative():
    with pytest.raises(SpecError) as info:
        make_rule(EpsilonScaled, {"epsilon": -1.0})
    assert str(info.value) == "rule 'epsilon_scaled': parameter 'epsilon' must be a number >= 0 (got -1.0)"


@pytest.fixture
def example_registry():
    """A registry with the built-ins and this plugin, registered as the entry point would."""
    fresh = PluginRegistry(autoload=False)
    fresh.register(zplug_example.plugin, "example", distribution="zplug-example")
    old = set_default_registry(fresh)
    yield fresh
    set_default_registry(old)


@pytest.mark.parametrize("name", ["epsilon_scaled", "example:epsilon_scaled"])
def test_rule_is_usable_by_name(example_registry, name):
    built = rule(name, epsilon=0.2)
    assert built == EpsilonScaled(epsilon=0.2)
    assert example_registry.rules.entry(name).plugin == "example"


def test_installed_entry_point_registers_the_rule():
    others = [ep.name for ep in entry_points(group="zplug") if ep.name != "example"]
    registry = PluginRegistry(autoload=True, disable=others)
    assert registry.rules["epsilon_scaled"] is EpsilonScaled
    (info,) = [p for p in registry.plugins() if p.name == "example"]
    assert (info.distribution, info.error) == ("zplug-example", None)


def test_preset_follows_the_preset_format(example_registry):
    path = files("zplug_example") / "presets" / "example_epsilon_scaled.toml"
    assert example_registry.presets["example:example_epsilon_scaled"] == path
    preset = tomllib.loads(path.read_text())
    assert preset["schema"] == 1
    layer_types = example_registry.layer_types
    for entry in preset["layer_map"]:
        assert set(entry["types"]) <= set(layer_types)
        spec = entry["rule"] if isinstance(entry["rule"], dict) else {"name": entry["rule"]}
        params = {k: v for k, v in spec.items() if k != "name"}
        for value in params.values():
            assert value["param"] in preset["params"]
        resolved = {k: preset["params"][v["param"]] for k, v in params.items()}
        make_rule(example_registry.rules[spec["name"]], resolved)


def _signs(z):
    return torch.where(z >= 0, 1.0, -1.0).to(z)


def test_ledger_splits_what_a_layer_absorbed_into_stabiliser_and_bias():
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    rules = {"0": EpsilonScaled(epsilon=0.1), "1": Pass(), "2": EpsilonScaled(epsilon=0.2)}
    e = zplug.explain(model, x, lambda out: out, mapping=rules, ledger=True)
    y = e.output.detach()
    d = y + 0.2 * y.square().mean(dim=1, keepdim=True).sqrt() * _signs(y)
    last = e.ledger.layer("2")
    assert last.stabilizer == pytest.approx(float((y * (d - y) / d).sum()), rel=1e-10)
    assert last.bias == pytest.approx(float((y * model[2].bias.detach() / d).sum()), rel=1e-8)
    for name in ("0", "2"):
        entry = e.ledger.layer(name)
        assert entry.stabilizer + entry.bias == pytest.approx(entry.lost, rel=1e-12)


def test_ledger_counts_a_dropped_sample_under_the_stabiliser():
    layer = torch.nn.Linear(4, 3, bias=False).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    x[2] = 0.0  # all outputs of sample 2 are zero: the rule drops its relevance
    e = zplug.explain(layer, x, lambda out: torch.ones_like(out), mapping={"": EpsilonScaled(epsilon=0.1)}, ledger=True)
    z = layer(x).detach()[:2]
    d = z + 0.1 * z.square().mean(dim=1, keepdim=True).sqrt() * _signs(z)
    (entry,) = e.ledger.entries
    assert entry.stabilizer == pytest.approx(float(((d - z) / d).sum()) + 3.0, rel=1e-10)
    assert entry.bias == pytest.approx(0.0, abs=1e-12)
    assert entry.relevance_in == 9.0 and entry.relevance_out == pytest.approx(9.0 - entry.stabilizer, rel=1e-10)
