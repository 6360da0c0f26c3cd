"""Rule parameters: defaults as in Zennit 0.5.1, and ``SpecError``s with exact messages for bad values."""

from __future__ import annotations

import pytest
import torch

import zplug.rules as pr
from zplug.errors import SpecError
from zplug.rules import make_rule, parameter_info

DEFAULTS = {
    pr.Epsilon: {"epsilon": 1e-6, "zero_params": ()},
    pr.ZPlus: {"stabilizer": 1e-6, "zero_params": ()},
    pr.AlphaBeta: {"alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6, "zero_params": ()},
    pr.Gamma: {"gamma": 0.25, "stabilizer": 1e-6, "zero_params": ()},
    pr.Flat: {"stabilizer": 1e-6, "zero_params": ()},
    pr.WSquare: {"stabilizer": 1e-6, "zero_params": ()},
    pr.Norm: {"stabilizer": 1e-6},
    pr.Pass: {},
    pr.ReLUDeconvNet: {},
    pr.ReLUGuidedBackprop: {},
    pr.ReLUBetaSmooth: {"beta_smooth": 10.0},
}


@pytest.mark.parametrize("rule_class", DEFAULTS, ids=lambda cls: cls.name)
def test_defaults_match_zennit(rule_class):
    assert rule_class().params() == DEFAULTS[rule_class]
    info = parameter_info(rule_class)
    assert {name: entry["default"] for name, entry in info.items()} == DEFAULTS[rule_class]
    assert all(entry["doc"] and entry["kind"] for entry in info.values())


def test_zbox_bounds_are_required():
    info = parameter_info(pr.ZBox)
    assert info["low"]["required"] and info["high"]["required"]
    assert pr.ZBox(low=0.0, high=1.0).params() == {"low": 0.0, "high": 1.0, "stabilizer": 1e-6, "zero_params": ()}


def test_rule_names_are_zennits_snake_case():
    names = [cls.name for cls in (*DEFAULTS, pr.ZBox)]
    assert sorted(names) == sorted([
        "epsilon", "zplus", "alpha_beta", "gamma", "zbox", "flat", "wsquare", "pass", "norm",
        "relu_deconvnet", "relu_guided_backprop", "relu_beta_smooth",
    ])


@pytest.mark.parametrize(
    ("value", "expected"),
    [("bias", ("bias",)), (["bias"], ("bias",)), (("bias", "weight"), ("bias", "weight")), (None, ())],
)
def test_zero_params_accepts_a_name_or_names(value, expected):
    assert pr.Epsilon(zero_params=value).zero_params == expected


BAD = [
    (pr.Epsilon, {"epsilon": -1.0},
     "rule 'epsilon': parameter 'epsilon' must be a number >= 0 or a callable f(z) (got -1.0)"),
    (pr.Epsilon, {"epsilon": float("nan")},
     "rule 'epsilon': parameter 'epsilon' must be a number >= 0 or a callable f(z) (got nan)"),
    (pr.Norm, {"stabilizer": "small"},
     "rule 'norm': parameter 'stabilizer' must be a number >= 0 or a callable f(z) (got 'small')"),
    (pr.AlphaBeta, {"alpha": 3.0, "beta": 1.0},
     "rule 'alpha_beta': parameters alpha and beta must satisfy alpha - beta = 1 (got alpha=3.0, beta=1.0)"),
    (pr.AlphaBeta, {"alpha": 1.0},
     "rule 'alpha_beta': parameters alpha and beta must satisfy alpha - beta = 1 (got alpha=1.0, beta=1.0)"),
    (pr.AlphaBeta, {"alpha": -1.0, "beta": -2.0},
     "rule 'alpha_beta': parameter 'alpha' must be a number >= 0 (got -1.0)"),
    (pr.Gamma, {"gamma": True}, "rule 'gamma': parameter 'gamma' must be a number >= 0 (got True)"),
    (pr.Gamma, {"gamma": -0.25}, "rule 'gamma': parameter 'gamma' must be a number >= 0 (got -0.25)"),
    (pr.ZBox, {"low": "zero", "high": 1.0},
     "rule 'zbox': parameter 'low' must be a number or a tensor (got 'zero')"),
    (pr.ZBox, {"low": 0.0}, "rule 'zbox' needs parameter 'high' (highest possible input value (number or tensor))"),
    (pr.Epsilon, {"eps": 0.1}, "rule 'epsilon' has no parameter 'eps' (did you mean 'epsilon'? valid: epsilon, "
                               "zero_params)"),
    (pr.Pass, {"epsilon": 0.1}, "rule 'pass' has no parameter 'epsilon' (valid: none)"),
    (pr.Flat, {"zero_params": 3},
     "rule 'flat': parameter 'zero_params' must be a parameter name or a list of names, e.g. [\"bias\"] (got 3)"),
    (pr.ReLUBetaSmooth, {"beta_smooth": None},
     "rule 'relu_beta_smooth': parameter 'beta_smooth' must be a number (got None)"),
]


@pytest.mark.parametrize(("rule_class", "params", "message"), BAD, ids=[f"{c.name}-{i}" for i, (c, _, _) in
                                                                         enumerate(BAD)])
def test_bad_parameters_raise_spec_errors(rule_class, params, message):
    with pytest.raises(SpecError) as info:
        make_rule(rule_class, params)
    assert str(info.value) == message


def test_direct_construction_raises_spec_error_without_the_rule_prefix():
    with pytest.raises(SpecError) as info:
        pr.Epsilon(epsilon=-1)
    assert str(info.value) == "parameter 'epsilon' must be a number >= 0 or a callable f(z) (got -1)"


def test_good_values_are_accepted():
    assert make_rule(pr.ZBox, {"low": torch.zeros(1, 3, 1, 1), "high": 1}).high == 1
    assert make_rule(pr.Epsilon, {"epsilon": 0}).epsilon == 0
    assert make_rule(pr.AlphaBeta, {"alpha": 1, "beta": 0}).alpha == 1
    stabilizer = make_rule(pr.Gamma, {"stabilizer": abs}).stabilizer
    assert stabilizer is abs


def test_rules_compare_by_parameters_including_tensors():
    low = torch.zeros(1, 3, 1, 1)
    assert pr.ZBox(low=low, high=1.0) == pr.ZBox(low=low.clone(), high=1.0)
    assert pr.ZBox(low=low, high=1.0) != pr.ZBox(low=low + 1, high=1.0)
    assert pr.Epsilon(epsilon=0.1) != pr.Epsilon(epsilon=0.2)


def test_rule_by_name_uses_the_registry(registry):
    assert pr.rule("gamma", gamma=0.5) == pr.Gamma(gamma=0.5)
    with pytest.raises(SpecError) as info:
        pr.rule("epsilon", epsilon=-2)
    assert str(info.value) == "rule 'epsilon': parameter 'epsilon' must be a number >= 0 or a callable f(z) (got -2)"
