"""Merged BatchNorm parameters are reused across applications only while the model is unchanged."""

from __future__ import annotations

import torch

from zplug.canonizers.batchnorm import merged
from zplug.engine.ops import params_of


def _model() -> torch.nn.Sequential:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    return model


def _merged_output(model: torch.nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    with merged(model, [(("0",), "1")]):
        return model(x), params_of(model[0])


def test_merged_parameters_are_reused_while_nothing_changed():
    model, x = _model(), torch.randn(2, 3, 8, 8)
    _, first = _merged_output(model, x)
    _, second = _merged_output(model, x)
    assert first["weight"] is second["weight"]


def test_in_place_change_of_statistics_invalidates_the_merge():
    model, x = _model(), torch.randn(2, 3, 8, 8)
    _merged_output(model, x)
    with torch.no_grad():
        model[1].running_var.mul_(3.0)
    out, _ = _merged_output(model, x)
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)


def test_replaced_parameter_invalidates_the_merge():
    model, x = _model(), torch.randn(2, 3, 8, 8)
    _merged_output(model, x)
    model[0].weight = torch.nn.Parameter(torch.randn_like(model[0].weight))
    out, _ = _merged_output(model, x)
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)
