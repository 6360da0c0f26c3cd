"""The nine built-in presets compute the same relevance as Zennit 0.5.1's composites of the same name.

Models: an MLP, a small CNN with BatchNorm, and torchvision's vgg11, vgg11_bn and alexnet with
random weights, random biases and random BatchNorm statistics, in float32. Without canonizers
every preset is compared on every model; on the BatchNorm models also Zennit's
``SequentialMergeBatchNorm`` against zplug's ``merge_batchnorm``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

zennit_composites = pytest.importorskip("zennit.composites")
zennit_canonizers = pytest.importorskip("zennit.canonizers")
torchvision = pytest.importorskip("torchvision")

import zplug  # noqa: E402

TOLERANCE = 1e-5  # max |zplug - zennit| / max |zennit|, float32


def _bounds(shape):
    low = -torch.linspace(2.0, 2.5, shape[1]).reshape(1, shape[1], *([1] * (len(shape) - 2)))
    return low, -low + 0.25


# name -> (Zennit class, parameters for both libraries); non-default values where the composite has any.
def _cases(shape):
    low, high = _bounds(shape)
    return {
        "epsilon_gamma_box": (
            zennit_composites.EpsilonGammaBox,
            {"low": low, "high": high, "epsilon": 1e-3, "gamma": 0.5, "stabilizer": 1e-5},
        ),
        "epsilon_plus": (zennit_composites.EpsilonPlus, {"epsilon": 1e-2, "zero_params": ["bias"]}),
        "epsilon_plus_flat": (zennit_composites.EpsilonPlusFlat, {"stabilizer": 1e-5}),
        "epsilon_alpha2_beta1": (zennit_composites.EpsilonAlpha2Beta1, {"epsilon": 1e-4}),
        "epsilon_alpha2_beta1_flat": (zennit_composites.EpsilonAlpha2Beta1Flat, {"zero_params": ["bias"]}),
        "deconvnet": (zennit_composites.DeconvNet, {}),
        "guided_backprop": (zennit_composites.GuidedBackprop, {}),
        "excitation_backprop": (zennit_composites.ExcitationBackprop, {"stabilizer": 1e-5}),
        "beta_smooth": (zennit_composites.BetaSmooth, {"beta_smooth": 5.0}),
    }


PRESETS = list(_cases((1, 3, 4, 4)))


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.copy_(torch.randn(bias.shape, generator=generator) * 0.05)
            if isinstance(module, nn.ReLU):
                # Zennit 0.5.1 stores the input of an in-place ReLU after the ReLU overwrote it, so its
                # beta_smooth gets sigmoid(beta * relu(x)); zplug runs such ReLUs out of place.
                module.inplace = False
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model.eval()


def _mlp():
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


def _cnn_bn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )  # fmt: skip


MODELS = {  # name -> (factory, input shape, has BatchNorm)
    "mlp": (_mlp, (2, 20), False),
    "cnn_bn": (_cnn_bn, (2, 3, 16, 16), True),
    "vgg11": (lambda: torchvision.models.vgg11(num_classes=10), (1, 3, 32, 32), False),
    "vgg11_bn": (lambda: torchvision.models.vgg11_bn(num_classes=10), (1, 3, 32, 32), True),
    "alexnet": (lambda: torchvision.models.alexnet(num_classes=10), (1, 3, 64, 64), False),
}
_built: dict[str, tuple[nn.Module, torch.Tensor]] = {}


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name not in _built:
        factory, shape, _ = MODELS[name]
        torch.manual_seed(sum(map(ord, name)))
        model = _randomise(factory(), seed=len(name))
        _built[name] = (model, torch.randn(shape, generator=torch.Generator().manual_seed(7)))
    return _built[name]


def _relevance(context, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    with context as m:
        out = m(x)
        target = torch.zeros_like(out)
        target[torch.arange(out.shape[0]), out.argmax(1)] = 1.0
        (relevance,) = torch.autograd.grad(out, x, grad_outputs=out * target)
    return out.detach(), relevance


def _compare(model_name: str, preset: str, *, canonizer: bool) -> None:
    model, x = _model(model_name)
    zennit_cls, params = _cases(tuple(x.shape))[preset]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    zennit_canon = [zennit_canonizers.SequentialMergeBatchNorm()] if canonizer else None
    composite = zennit_cls(canonizers=zennit_canon, **params)
    out_z, rel_z = _relevance(composite.context(model), model, x)

    mapping = zplug.resolve(model, preset, canonizers=["merge_batchnorm"] if canonizer else [], **params)
    out_p, rel_p = _relevance(mapping.applied(model), model, x)

    torch.testing.assert_close(out_p, out_z, rtol=1e-5, atol=1e-5)
    assert rel_z.abs().max() > 0, "Zennit's relevance is all zero: the case tests nothing"
    rel_err = ((rel_p - rel_z).abs().max() / rel_z.abs().max()).item()
    assert rel_err <= TOLERANCE, f"{preset} on {model_name}: max relative difference {rel_err:.2e}"
    for key, value in model.state_dict().items():  # both libraries restored the model
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_matches_zennit(registry, preset, model_name):
    _compare(model_name, preset, canonizer=False)


@pytest.mark.parametrize("model_name", [name for name, (_, _, bn) in MODELS.items() if bn])
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_with_batchnorm_merge_matches_zennit(registry, preset, model_name, monkeypatch):
    if "merge_batchnorm" not in registry.canonizers:
        pytest.skip("canonizer 'merge_batchnorm' is not registered")
    model, _ = _model(model_name)
    # Zennit 0.5.1 keeps BatchNorm's eps in its "identity" BN, which changes the output by ~1e-5 per
    # layer; with a negligible eps both libraries compute the same function.
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            monkeypatch.setattr(module, "eps", 1e-30)
    _compare(model_name, preset, canonizer=True)


#: Built-in presets without a Zennit composite (transformers); the torchvision plugin's transformer tests compare
#: them with LXT.
NOT_ZENNIT = {"attnlrp", "attnlrp_gamma", "cp_lrp", "cp_lrp_gamma"}


def test_every_builtin_preset_is_compared(registry):
    builtin = {e.name for e in registry.presets.entries() if e.plugin == "zplug"}
    assert builtin - NOT_ZENNIT == set(PRESETS)
