"""zplug.explain: targets, input/output structures, parameter routing, every attributor x preset."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

import zplug
from zplug.errors import ModelMismatchError, SpecError

_spec = importlib.util.spec_from_file_location("attr_models", Path(__file__).with_name("test_attributors_models.py"))
models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(models)

ATTRIBUTORS = {
    "gradient": {},
    "smoothgrad": {"n_iter": 2, "noise_level": 0.1},
    "integrated_gradients": {"n_iter": 3},
    "occlusion": {"window": 4},
}


def presets():
    from zplug.registry import PluginRegistry

    return sorted(PluginRegistry(autoload=False).presets)


def grad(model, x, onehot):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x), x, onehot)
    return g


@pytest.mark.parametrize("preset", presets())
@pytest.mark.parametrize("make_model", [models.cnn, models.ResNetLike], ids=["cnn", "resnet"])
def test_every_attributor_with_every_preset(registry, make_model, preset):
    model, x = make_model(), torch.rand(2, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(x)
    bounds = {"low": 0.0, "high": 1.0} if preset == "epsilon_gamma_box" else {}
    for name, params in ATTRIBUTORS.items():
        e = zplug.explain(model, x, [0, 3], preset=preset, attributor=name, **params, **bounds)
        torch.testing.assert_close(e.output, expected, rtol=1e-5, atol=1e-6)
        assert e.relevance.shape == x.shape and bool(torch.isfinite(e.relevance).all()), name
        assert e.mapping.preset.name == preset and e.attributor.name == name
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_targets():
    model, x = models.mlp(), torch.randn(3, 6)
    with torch.no_grad():
        out = model(x)
    eye = torch.eye(3)
    torch.testing.assert_close(zplug.explain(model, x, 1).relevance, grad(model, x, eye[[1, 1, 1]]))
    torch.testing.assert_close(zplug.explain(model, x, [0, 2, 1]).relevance, grad(model, x, eye[[0, 2, 1]]))
    per_sample = zplug.explain(model, x, torch.tensor([2, 2, 0])).relevance
    torch.testing.assert_close(per_sample, grad(model, x, eye[[2, 2, 0]]))
    predicted = out.argmax(1)
    torch.testing.assert_close(zplug.explain(model, x).relevance, grad(model, x, eye[predicted]))
    torch.testing.assert_close(zplug.explain(model, x, lambda o: o).relevance, grad(model, x, out))
    weights = torch.randn(3, 3)
    torch.testing.assert_close(zplug.explain(model, x, weights).relevance, grad(model, x, weights))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (3, "target class out of range: the output has 3 classes (got [3, 3])"),
        ([0], "target must hold one integer class index per sample (2); got shape (1,) and dtype int64"),
        (torch.zeros(2, 2), "a floating-point target is the output relevance and needs the output's shape (2, 3) "
                            "(got (2, 2)); pass class indices as an integer tensor"),
        (lambda out: out[:, :1].sum(), None),
    ],
)
def test_target_errors(target, message):
    model = models.mlp()
    if message is None:  # a callable returning a scalar is broadcast (relevance of the whole output)
        zplug.explain(model, torch.randn(2, 6), target)
        return
    with pytest.raises(SpecError) as info:
        zplug.explain(model, torch.randn(2, 6), target)
    assert str(info.value) == message


class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

    def forward(self, x, y):
        h = torch.tanh(self.a(x)) + self.b(y)
        return h, h * 2


def test_tuple_inputs_and_outputs():
    model, x, y = TwoInTwoOut(), torch.randn(2, 4), torch.randn(2, 2)
    e = zplug.explain(model, (x, y), 1, output_index=1)
    assert isinstance(e.relevance, tuple) and [r.shape for r in e.relevance] == [x.shape, y.shape]
    xs = (x.clone().requires_grad_(), y.clone().requires_grad_())
    expected = torch.autograd.grad(model(*xs)[1][:, 1].sum(), xs)
    torch.testing.assert_close(e.relevance, expected)
    for name, params in ATTRIBUTORS.items():
        r = zplug.explain(model, (x, y), 1, output_index=1, attributor=name, **params).relevance
        assert [t.shape for t in r] == [x.shape, y.shape]
    ig = zplug.explain(model, (x, y), 1, output_index=1, attributor="integrated_gradients", n_iter=256,
                       method="riemann_middle")
    with torch.no_grad():
        gap = model(x, y)[1][:, 1] - model(torch.zeros_like(x), torch.zeros_like(y))[1][:, 1]
    torch.testing.assert_close(ig.relevance[0].sum(1) + ig.relevance[1].sum(1), gap, rtol=1e-3, atol=1e-4)
    with pytest.raises(ModelMismatchError) as info:
        zplug.explain(model, (x, y), 1)
    assert str(info.value) == "the model returns a tuple of 2 outputs; choose one with output_index"


def test_input_errors():
    with pytest.raises(SpecError) as info:
        zplug.explain(models.mlp(), torch.ones(2, 6, dtype=torch.long))
    assert str(info.value) == "input 0 must be a floating-point tensor (got a int64 tensor)"
    with pytest.raises(SpecError, match=r"inputs must share the batch size"):
        zplug.explain(TwoInTwoOut(), (torch.randn(2, 4), torch.randn(3, 2)), output_index=0)


def test_parameters_go_to_the_attributor_or_the_preset(registry):
    model, x = models.cnn(), torch.rand(1, 3, 8, 8)
    e = zplug.explain(model, x, 0, preset="epsilon_plus", attributor="smoothgrad", n_iter=2, epsilon=0.5)
    assert e.attributor.n_iter == 2 and e.mapping.params["epsilon"] == 0.5
    with pytest.raises(SpecError) as info:
        zplug.explain(model, x, 0, preset="epsilon_plus", attributor="smoothgrad", gamma=0.5)
    assert str(info.value) == (
        "unknown parameter 'gamma' for attributor 'smoothgrad' or the preset "
        "(valid: noise_level, n_iter, chunk_size, epsilon, stabilizer, zero_params)"
    )
    with pytest.raises(SpecError) as info:
        zplug.explain(model, x, 0, n_iter=3)
    assert str(info.value) == (
        "unknown parameter 'n_iter' for attributor 'gradient' (and no preset is given) (valid: none)"
    )


def test_ambiguous_parameter(registry, tmp_path):
    text = (Path(zplug.__file__).parent / "preset" / "presets" / "epsilon_plus.toml").read_text()
    text = text.replace("[params]\n", '[params]\nn_iter = { default = 1, doc = "clashes with the attributors" }\n')
    preset = tmp_path / "clash.toml"
    preset.write_text(text)
    with pytest.raises(SpecError) as info:
        zplug.explain(models.cnn(), torch.rand(1, 3, 8, 8), preset=str(preset), attributor="smoothgrad", n_iter=2)
    assert str(info.value).startswith(
        "parameter 'n_iter' is ambiguous: both attributor 'smoothgrad' and the preset accept it"
    )


def test_preset_and_mapping_exclude_each_other():
    with pytest.raises(SpecError) as info:
        zplug.explain(models.mlp(), torch.randn(1, 6), preset="epsilon", mapping={})
    assert str(info.value) == "give either preset= or mapping=, not both"


def test_public_api():
    import zplug.explanation as module

    assert zplug.explain is module.explain and zplug.Explanation is module.Explanation
    assert callable(zplug.explain) and "explain" in zplug.__all__ and "Explanation" in zplug.__all__
    e = zplug.explain(models.mlp(), torch.randn(1, 6), attributor=zplug.attributors.Gradient())
    assert isinstance(e, zplug.Explanation) and e.ledger is None and e.mapping is None
