"""Resolving presets against models, the LayerMapping, and applying it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest
import torch
from torch import nn

import zplug
from zplug.canonizers import Canonizer
from zplug.errors import ModelMismatchError, SpecError
from zplug.layers import Sum
from zplug.preset import Preset


def _preset(text: str, name: str = "test") -> Preset:
    return Preset.from_toml("schema = 1\n" + text, name=name)


def _cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3),
    ).eval()  # fmt: skip


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.norm = nn.BatchNorm2d(3)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


LAYERS = """
[[layer_map]]
types = ["convolution"]
rule = "zplus"

[[layer_map]]
types = ["linear"]
rule = { name = "epsilon", epsilon = 0.5 }

[[layer_map]]
types = ["activation"]
rule = "pass"
"""


def test_one_entry_per_module_in_named_modules_order(registry):
    model = _cnn()
    mapping = zplug.resolve(model, _preset(LAYERS))
    assert [e.name for e in mapping] == [n for n, _ in model.named_modules()]
    assert [e.type for e in mapping] == [type(m).__name__ for _, m in model.named_modules()]
    assert mapping["0"].rule_name == "zplus" and mapping["0"].matched == "layer_map[0]"
    assert mapping["6"].params == {"epsilon": 0.5, "zero_params": ()}
    assert mapping["4"].rule is None and mapping["4"].matched is None  # AdaptiveAvgPool2d: not selected
    assert mapping[""].leaf is False and mapping["0"].leaf and mapping["0"].has_params
    assert set(mapping.rules) == {"0", "1", "2", "3", "6", "7", "8"}
    assert mapping.rules["0"] is mapping.rules["2"]  # one rule instance per entry


def test_precedence_name_first_last_layer(registry):
    preset = _preset("""
[[name_map]]
names = ["2"]
rule = "flat"

[[first_map]]
types = ["affine"]
rule = "wsquare"

[[last_map]]
types = ["affine"]
rule = { name = "epsilon", epsilon = 0.0 }
""" + LAYERS)
    mapping = zplug.resolve(_cnn(), preset)
    got = {name: (mapping[name].rule_name, mapping[name].matched) for name in ("0", "2", "6", "8")}
    assert got == {
        "0": ("wsquare", "first_map[0]"),
        "2": ("flat", "name_map[0]"),
        "6": ("epsilon", "layer_map[1]"),
        "8": ("epsilon", "last_map[0]"),
    }
    assert mapping["8"].params["epsilon"] == 0.0


def test_first_map_skips_modules_taken_by_name_map(registry):
    preset = _preset("""
[[name_map]]
names = ["0"]
rule = "pass"

[[first_map]]
types = ["convolution"]
rule = "flat"
""")
    mapping = zplug.resolve(_cnn(), preset)
    assert mapping["0"].rule_name == "pass" and mapping["2"].rule_name == "flat"


def test_globs_types_filter_and_class_paths(registry):
    model = nn.Sequential(Block(), Block(), nn.Flatten(), nn.Linear(12, 2))
    preset = _preset("""
[[name_map]]
names = ["*.conv"]
types = ["torch.nn.Conv2d"]
rule = "flat"

[[name_map]]
names = ["1.*"]
rule = "pass"
""")
    mapping = zplug.resolve(model, preset)
    assert {e.name: e.rule_name for e in mapping if e.rule} == {
        "0.conv": "flat", "1.conv": "flat", "1.norm": "pass", "1.act": "pass",
    }  # fmt: skip


def test_name_map_naming_a_missing_module(registry):
    preset = _preset('[[name_map]]\nnames = ["6", "66"]\nrule = "epsilon"\n', name="mine")
    with pytest.raises(ModelMismatchError) as info:
        zplug.resolve(_cnn(), preset)
    assert str(info.value) == (
        "name_map[0].names[1]: the model Sequential has no module '66' (did you mean '6'?); "
        "run `zplug mapping` without this entry to list the module names"
    )


def test_unmapped_and_strict(registry):
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(), nn.Flatten()).eval()
    mapping = zplug.resolve(model, "excitation_backprop", canonizers=[])
    assert mapping.unmapped == ("1",)
    assert mapping["3"].rule is None and not mapping["3"].unmapped  # no parameters: not reported
    assert "UNMAPPED" in str(mapping) and "unmapped: 1 hold parameters" in str(mapping)
    with pytest.raises(ModelMismatchError) as info:
        zplug.resolve(model, "excitation_backprop", canonizers=[], strict=True)
    assert str(info.value).startswith(
        "preset 'excitation_backprop' gives no rule to 1 module(s) with parameters: 1 (BatchNorm2d); "
    )
    assert zplug.resolve(model, "epsilon_plus", canonizers=[], strict=True).unmapped == ()


def test_required_parameter(registry):
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert zplug.resolve(mlp, "epsilon_gamma_box").rules["0"].name == "epsilon"  # no zbox needed
    with pytest.raises(SpecError) as info:
        zplug.resolve(_cnn(), "epsilon_gamma_box", high=3.0)
    assert str(info.value) == (
        "zplug:presets/epsilon_gamma_box.toml: params.low: preset 'epsilon_gamma_box' needs a value for "
        "parameter 'low' (lowest possible input value: a number, or a tensor broadcast to the input): pass "
        "resolve(..., low=...) or --param low=..."
    )


def test_parameters_override_defaults_and_are_checked(registry):
    low = torch.full((1, 3, 1, 1), -2.0)
    mapping = zplug.resolve(_cnn(), "epsilon_gamma_box", low=low, high=2.0, gamma=0.5, zero_params="bias")
    zbox, gamma = mapping["0"].rule, mapping["2"].rule
    assert zbox.low is low and zbox.high == 2.0 and zbox.zero_params == ("bias",)
    assert gamma.gamma == 0.5 and mapping.params["epsilon"] == 1e-6
    with pytest.raises(SpecError) as info:
        zplug.resolve(_cnn(), "epsilon_gamma_box", low=-1.0, high=1.0, gamma=-1.0)
    assert str(info.value) == (
        "zplug:presets/epsilon_gamma_box.toml: layer_map[4].rule: rule 'gamma': parameter 'gamma' must be a "
        "number >= 0 (got -1.0)"
    )
    with pytest.raises(SpecError, match=r"^preset 'epsilon_gamma_box' has no parameter 'gama' \(did you mean 'gamma'"):
        zplug.resolve(_cnn(), "epsilon_gamma_box", low=0, high=1, gama=0.5)
    with pytest.raises(SpecError, match=r"^preset 'epsilon_plus' has no parameter 'gamma' \(known: epsilon, "):
        zplug.resolve(_cnn(), "epsilon_plus", gamma=0.5)


def test_lrp0_equals_input_times_gradient(registry):
    """LRP-0 (epsilon 0 everywhere, pass on activations) is input x gradient (float64)."""
    model = _cnn().double()
    preset = _preset("""
[[layer_map]]
types = ["affine"]
rule = { name = "epsilon", epsilon = 0.0 }

[[layer_map]]
types = ["activation"]
rule = "pass"

[[layer_map]]
types = ["avgpool"]
rule = { name = "norm", stabilizer = 0.0 }
""")
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    out = model(x)
    onehot = torch.nn.functional.one_hot(out.argmax(1), 3).double()
    (grad,) = torch.autograd.grad(out, x, onehot)
    mapping = zplug.resolve(model, preset)
    with mapping.applied(model) as m:
        out2 = m(x)
        (relevance,) = torch.autograd.grad(out2, x, out2 * onehot)
    torch.testing.assert_close(relevance, x * grad, rtol=1e-9, atol=1e-12)


def test_applied_restores_the_model_and_calls_observers(registry):
    model = _cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mapping = zplug.resolve(model, "epsilon_plus")
    seen = []
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    with pytest.raises(RuntimeError, match="boom"):
        with mapping.applied(model, observers=(lambda binding, *rest: seen.append(binding.name),)) as m:
            assert m is model and "forward" in model[0].__dict__
            out = m(x)
            torch.autograd.grad(out, x, torch.ones_like(out))
            raise RuntimeError("boom")
    assert {"0", "2", "6", "8"} <= set(seen)
    assert all("forward" not in module.__dict__ for module in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_applied_checks_the_model(registry):
    mapping = zplug.resolve(_cnn(), "epsilon_plus")
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ModelMismatchError, match="module '0' is a Linear, but the mapping was resolved for a Conv2d"):
        with mapping.applied(other):
            pass
    with pytest.raises(ModelMismatchError, match="no such module"):
        with zplug.resolve(_cnn(), _preset(LAYERS)).applied(nn.Sequential(nn.Conv2d(3, 4, 3))):
            pass
    twin = _cnn()  # same architecture, other instance: fine
    with zplug.resolve(_cnn(), "epsilon_plus").applied(twin) as m:
        m(torch.randn(1, 3, 4, 4))


# -- canonizers ------------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class AddSum(Canonizer):
    """A test canonizer that adds a ``Sum`` module while applied (as residual canonizers do)."""

    name = "test_add_sum"
    summary = "adds a Sum module"
    label: str = "extra"

    @contextmanager
    def applied(self, model):
        model.add_module(self.label, Sum())
        try:
            yield model
        finally:
            del model._modules[self.label]

    def describe(self, model):
        return [f"add Sum '{self.label}'"]


class CanonizerPlugin:
    @staticmethod
    @zplug.hookimpl
    def zplug_register_canonizers():
        return [AddSum]

    @staticmethod
    @zplug.hookimpl
    def zplug_suggest_canonizers(model):
        return [("test_add_sum", "the model is a Sequential")] if isinstance(model, nn.Sequential) else None


def test_resolves_against_the_canonized_model(registry):
    registry.register(CanonizerPlugin, "canon_plugin")
    model = _cnn()
    preset = _preset('canonizers = [{ name = "test_add_sum", label = "s" }]\n' + LAYERS + """
[[layer_map]]
types = ["sum"]
rule = "norm"
""")
    mapping = zplug.resolve(model, preset)
    assert [c.name for c in mapping.canonizers] == ["test_add_sum"]
    assert mapping.canonizers[0].reason == "listed in the preset"
    assert mapping.canonizers[0].changes == ("add Sum 's'",)
    assert mapping["s"].rule_name == "norm" and "s" not in dict(model.named_modules())
    with mapping.applied(model):
        assert "forward" in model.s.__dict__  # the rule is attached to the canonizer's module
    assert "s" not in dict(model.named_modules())
    auto = zplug.resolve(model, "epsilon_plus")
    assert [(c.name, c.reason) for c in auto.canonizers] == [("test_add_sum", "auto: the model is a Sequential")]
    assert zplug.resolve(model, "epsilon_plus", canonizers=[]).canonizers == ()
    given = zplug.resolve(model, "epsilon_plus", canonizers=[AddSum(label="t")])
    assert given["t"].rule_name == "norm" and given.canonizers[0].reason == "given to resolve()"
    text = auto.to_toml()
    assert 'canonizers = ["test_add_sum"]' in text
    assert zplug.resolve(model, _preset(text.replace("schema = 1\n", ""))).same_as(auto)


def test_canonizer_parameter_from_preset_params(registry):
    registry.register(CanonizerPlugin, "canon_plugin")
    preset = _preset('canonizers = [{ name = "test_add_sum", label = { param = "where" } }]\n[params]\nwhere = "w"\n')
    mapping = zplug.resolve(_cnn(), preset, where="z")
    assert mapping.canonizers[0].canonizer.label == "z" and "z" in mapping
    assert zplug.resolve(_cnn(), _preset(preset_text := 'canonizers = [{ name = "test_add_sum" }]\n')).canonizers
    assert preset_text


# -- display and round trip ------------------------------------------------------------------------
def test_table(registry):
    mapping = zplug.resolve(_cnn(), "epsilon_gamma_box", low=-1.0, high=1.0, canonizers=[])
    lines = str(mapping).splitlines()
    assert lines[0] == "preset 'epsilon_gamma_box' on Sequential: 8 module(s) with a rule, 0 unmapped"
    assert lines[2] == "canonizers: none"
    assert lines[3].split() == ["module", "type", "rule", "parameters", "matched"]
    row = next(line for line in lines if line.startswith("0 "))
    assert row.split(None, 3)[:3] == ["0", "Conv2d", "zbox"] and row.endswith("first_map[0]")
    assert "low=-1, high=1, stabilizer=1e-06" in row
    assert any(line.split()[:3] == ["5", "Flatten", "-"] and "(plain gradient)" in line for line in lines)
    assert "(model)" not in str(mapping)  # containers without a rule are not rows


@pytest.mark.parametrize("name", ["epsilon_gamma_box", "epsilon_plus_flat", "excitation_backprop", "beta_smooth"])
def test_to_toml_round_trip(registry, tmp_path, name):
    model = nn.Sequential(_cnn(), nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()))
    low = torch.tensor([[-1.0], [-2.0], [-3.0]]).reshape(1, 3, 1, 1)
    params = {"low": low, "high": 2.0} if name == "epsilon_gamma_box" else {}
    mapping = zplug.resolve(model, name, canonizers=[], zero_params=["bias"], **params)
    path = tmp_path / "explicit.toml"
    path.write_text(mapping.to_toml())
    again = zplug.resolve(model, path)
    assert again.same_as(mapping)
    assert [e.rule_name for e in again] == [e.rule_name for e in mapping]
    assert all(e.matched.startswith("name_map[") for e in again if e.rule)
    assert again.to_toml().replace("'explicit'", f"'{name}'") == mapping.to_toml()


def test_to_toml_refuses_callables(registry):
    mapping = zplug.resolve(_cnn(), "epsilon_plus", stabilizer=lambda z: z + 1e-6, canonizers=[])
    with pytest.raises(SpecError, match=r"module '0': cannot write function value <lambda> to TOML"):
        mapping.to_toml()


def test_resolve_accepts_a_path(registry, tmp_path):
    path = Path(tmp_path) / "mine.toml"
    path.write_text("schema = 1\n" + LAYERS)
    assert zplug.resolve(_cnn(), path).preset.name == "mine"
    assert zplug.resolve(_cnn(), str(path)).rules.keys() == zplug.resolve(_cnn(), _preset(LAYERS)).rules.keys()


def test_auto_canonizers_merge_batchnorm(registry):
    if "merge_batchnorm" not in registry.canonizers:
        pytest.skip("canonizer 'merge_batchnorm' is not registered")
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)).eval()
    auto = zplug.resolve(model, "epsilon_plus")
    assert [c.name for c in auto.canonizers] == ["merge_batchnorm"]
    assert auto.canonizers[0].reason.startswith("auto: ") and auto.canonizers[0].changes
    explicit = zplug.resolve(model, "epsilon_plus", canonizers=["merge_batchnorm"])
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    results = []
    for mapping in (auto, explicit):
        with mapping.applied(model) as m:
            out = m(x)
            results.append(torch.autograd.grad(out, x, torch.ones_like(out))[0])
    assert torch.equal(results[0], results[1])
    assert zplug.resolve(model, Preset.from_toml(auto.to_toml(), name="x")).same_as(auto)
