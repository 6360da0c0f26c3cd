"""NaN and infinity are refused with a message naming where they are: parameters, presets, inputs, output, relevance."""

from __future__ import annotations

import math

import pytest
import torch

import zplug
from zplug.errors import InputError, RelevanceError, SpecError
from zplug.rules import rule as make_rule


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).double().eval()


@pytest.mark.parametrize(
    ("rule", "params", "message"),
    [
        ("epsilon", {"epsilon": math.inf}, "parameter 'epsilon' must be finite (got inf)"),
        ("gamma", {"gamma": math.inf}, "parameter 'gamma' must be finite (got inf)"),
        ("gamma", {"gamma": -math.inf}, "parameter 'gamma' must be finite (got -inf)"),
        ("alpha_beta", {"alpha": math.nan}, "parameter 'alpha' must be a number >= 0 (got nan)"),
        ("zbox", {"low": math.nan, "high": 1.0}, "parameter 'low' must be a number or a tensor (got nan)"),
        ("zbox", {"low": torch.tensor([0.0, math.nan]), "high": 1.0},
         "parameter 'low' must be finite (got a tensor with NaN or infinite entries)"),
        ("zbox", {"low": 0.0, "high": torch.tensor([math.inf])},
         "parameter 'high' must be finite (got a tensor with NaN or infinite entries)"),
    ],
)
def test_rule_parameters_must_be_finite(rule, params, message):
    with pytest.raises(SpecError) as info:
        make_rule(rule, **params)
    assert str(info.value) == f"rule '{rule}': {message}"


def test_a_preset_value_of_inf_names_the_file_and_the_entry(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('schema = 1\n[[layer_map]]\ntypes = ["linear"]\nrule = { name = "gamma", gamma = inf }\n')
    with pytest.raises(SpecError) as info:
        zplug.resolve(_model(), preset)
    assert str(info.value) == f"{preset}: layer_map[0].rule: rule 'gamma': parameter 'gamma' must be finite (got inf)"


def test_a_parameter_passed_as_inf_is_refused():
    with pytest.raises(SpecError, match=r"parameter 'epsilon' must be finite \(got inf\)$"):
        zplug.explain(_model(), torch.ones(1, 4, dtype=torch.float64), 0, preset="epsilon_plus", epsilon=math.inf)


def test_zero_params_names_must_exist_on_the_layers_they_apply_to():
    with pytest.raises(SpecError) as info:
        zplug.resolve(_model(), "epsilon_plus", canonizers=[], zero_params=["biass"])
    assert str(info.value).endswith(
        "zero_params names 'biass', which no layer given this rule has (their parameters: bias, weight; "
        "did you mean 'bias'?)"
    )
    assert "layer_map[" in str(info.value)
    mapping = zplug.resolve(_model(), "epsilon_plus", canonizers=[], zero_params=["bias"])
    assert mapping["0"].rule.zero_params == ("bias",)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_inputs_with_nan_or_inf_are_refused(bad):
    x = torch.ones(2, 4, dtype=torch.float64)
    x[1, 2] = bad
    with pytest.raises(InputError) as info:
        zplug.explain(_model(), x, 0, preset="epsilon_plus")
    assert str(info.value) == "the input holds NaN or infinite values; replace them before explaining"


def test_a_nan_weight_names_the_first_layer_whose_output_is_not_finite():
    model = _model()
    with torch.no_grad():
        model[2].weight[0, 1] = math.nan
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RelevanceError) as info:
        zplug.explain(model, torch.ones(1, 4, dtype=torch.float64), 0, preset="epsilon_plus")
    assert str(info.value) == (
        "the model's output holds NaN or infinite values; it first appears in the output of layer '2' (Linear); "
        "check the weights (e.g. with torch.isfinite) and the inputs"
    )
    after = model.state_dict()
    for key, value in before.items():  # the model is untouched, its NaN included
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, equal_nan=True)


def test_relevance_that_becomes_non_finite_names_the_rule_that_made_it():
    """LRP-0 (epsilon = 0) divides by a pre-activation that is exactly zero: inf/NaN, which the rule reports."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 1, bias=False)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
        model[1].weight.copy_(torch.tensor([[1.0, 1.0]]))
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)  # first unit of layer 0 is exactly 0
    with pytest.raises(RelevanceError) as info:
        zplug.explain(model, x, 0, preset="epsilon_plus", epsilon=0.0, canonizers=[])
    assert str(info.value) == (
        "the relevance holds NaN or infinite values; it first appears in the relevance of layer '0' "
        "(rule epsilon(epsilon=0.0, zero_params=())); check the rule parameters (stabilisers, bounds) and weights"
    )
