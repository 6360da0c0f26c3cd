"""Coverage of the presets on torchvision models: nothing uncovered where the canonizers do their job.

The analysis (torch.fx, no forward pass) must find no uncovered operation for any preset on the
families the plugin canonizes, and the conservation ledger of one LRP pass confirms it
independently: no relevance leaks outside the rules.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import zplug
from zplug.errors import CoverageWarning
from zplug.registry import PluginRegistry, set_default_registry

MODELS = {"resnet18": 64, "vgg16": 32, "densenet121": 32, "mobilenet_v2": 32}


@pytest.fixture(scope="module")
def registry():
    fresh = PluginRegistry(autoload=True)
    old = set_default_registry(fresh)
    yield fresh
    set_default_registry(old)


def preset_params(preset: str) -> dict:
    return {"low": -3.0, "high": 3.0} if preset == "epsilon_gamma_box" else {}


def unmerged_batchnorms(model: torch.nn.Module) -> set[str]:
    """DenseNet's BatchNorms that follow a concatenation (pre-activation), not a convolution: none can be merged."""
    return {
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.BatchNorm2d) and not name.endswith(".norm2") and name != "features.norm0"
    }


def test_excitation_backprop_leaves_densenets_unmerged_batchnorm_uncovered(tv, registry):
    # Like Zennit's composite, excitation_backprop has no rule for BatchNorm: where a BatchNorm cannot be
    # merged into a convolution, its plain gradient rescales the relevance, and zplug says so.
    model = tv.shared_model("densenet121")
    with pytest.warns(CoverageWarning) as record:
        with zplug.resolve(model, "excitation_backprop").applied(model):
            pass
    expected = unmerged_batchnorms(model)
    assert len(expected) == 62
    assert sorted(str(w.message) for w in record) == sorted(
        f"{name}: BatchNorm2d (no rule): not covered by preset 'excitation_backprop', its plain gradient is used"
        for name in expected
    )


@pytest.mark.parametrize("model_name", list(MODELS))
def test_every_preset_covers_the_model(tv, registry, model_name):
    model = tv.shared_model(model_name)
    for preset in sorted(registry.presets):
        if (model_name, preset) == ("densenet121", "excitation_backprop"):
            continue  # see the test above
        with warnings.catch_warnings():
            warnings.simplefilter("error", CoverageWarning)
            mapping = zplug.resolve(model, preset, **preset_params(preset))
            with mapping.applied(model):  # where the warnings would come from
                pass
        coverage = mapping.coverage
        assert coverage.gradient_method or (coverage.method == "torch.fx" and coverage.uncovered == ()), preset
        assert coverage.idle == (), preset


@pytest.mark.parametrize("model_name", list(MODELS))
def test_the_ledger_confirms_no_leak(tv, registry, model_name):
    model = tv.shared_model(model_name)
    size = MODELS[model_name]
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        e = zplug.explain(model, x, 3, preset="epsilon_alpha2_beta1", ledger=True)
    assert abs(e.ledger.leaked) <= 1e-6 * abs(e.ledger.output)


def test_stochastic_depth_is_declared_linear(tv, registry):
    model = tv.shared_model("efficientnet_b0")
    coverage = zplug.resolve(model, "epsilon_plus").coverage
    depth = [op for op in coverage.operations if op.op == "StochasticDepth"]
    assert depth and all(op.kind == "linear" for op in depth)
    assert coverage.uncovered == ()


@pytest.mark.parametrize(
    "model_name,canonizers", [("resnet18", []), ("resnet18", None), ("mobilenet_v2", None)], ids=str
)
def test_fx_and_first_call_agree(tv, registry, monkeypatch, model_name, canonizers):
    import weakref

    import zplug.coverage
    from zplug.coverage import fx

    model = tv.shared_model(model_name)
    traced = zplug.resolve(model, "epsilon_plus", canonizers=canonizers).coverage
    monkeypatch.setattr(zplug.coverage, "_cache", weakref.WeakKeyDictionary())
    monkeypatch.setattr(fx, "trace_steps", lambda *a: (_ for _ in ()).throw(fx.FxTraceError("refused")))
    mapping = zplug.resolve(model, "epsilon_plus", canonizers=canonizers)
    first_call = mapping.analyse_coverage(model, torch.rand(1, 3, 32, 32))

    def key(coverage):
        return (
            sorted((op.where, op.op, op.calls) for op in coverage.uncovered),
            sorted(m.name for m in coverage.idle),
            sorted(m.name for m in coverage.lossy),
        )

    assert first_call.method == "autograd graph of the first call" and traced.method == "torch.fx"
    assert key(first_call) == key(traced)
    if canonizers == []:  # without canonizer every residual addition is a functional add of two tensors
        assert [(op.where, op.op) for op in traced.uncovered] == [
            (f"layer{i}.{j}", "add") for i in range(1, 5) for j in range(2)
        ]
