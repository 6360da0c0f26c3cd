"""Helpers for the plugin's tests: seeded models, Zennit-equivalent rule assignments, relevance."""

from __future__ import annotations

import functools
import sys

import pytest
import torch
from zplug_torchvision import build, imagenet_bounds
from zplug_torchvision.plugin import zplug_register_layer_types

from zplug import layertypes
from zplug.canonizers import applied_canonizers
from zplug.engine import attach_rules
from zplug.layers import Sum
from zplug.preset.classes import import_class
from zplug.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, ZBox, ZPlus


def classes(paths) -> tuple[type, ...]:
    """The module classes that layer types declare by their paths."""
    return tuple(import_class(path) for path in paths)


ACTIVATION, AVGPOOL, BATCHNORM, CONVOLUTION = (
    classes(kind) for kind in (layertypes.ACTIVATION, layertypes.AVGPOOL, layertypes.BATCHNORM, layertypes.CONVOLUTION)
)
#: What the plugin adds to the "activation" kind (squeeze-excitation gates).
PLUGIN_ACTIVATIONS = classes(zplug_register_layer_types()["activation"])


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm random affine parameters and random, realistically scaled statistics.

    The statistics are first measured on a batch of random inputs (so activations keep a
    sensible scale through deep networks), then perturbed per channel; the seed fixes everything.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in norms:
            shape = bn.running_mean.shape
            bn.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
            bn.bias.copy_(torch.rand(shape, generator=generator) - 0.5)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batch
        if norms:
            model.train()
            model(torch.randn(4, 3, 64, 64, generator=generator))
        for bn in norms:
            shape = bn.running_mean.shape
            std = bn.running_var.sqrt()
            bn.running_mean.add_(0.2 * std * (torch.rand(shape, generator=generator) - 0.5))
            bn.running_var.mul_(torch.rand(shape, generator=generator) * 0.5 + 0.75)
            bn.momentum = 0.1
    return model.eval()


@functools.lru_cache(maxsize=4)
def shared_model(name: str, eps: float | None = None) -> torch.nn.Module:
    """:func:`make_model`, built once per session (VGG's 100M-parameter classifier is slow to initialise).

    Tests that use it must leave it as they found it (canonizers and rules restore it exactly).
    """
    return make_model(name, eps=eps)


def zero_biases(model: torch.nn.Module) -> torch.nn.Module:
    """Remove every additive constant: zero biases, BatchNorm shifts and running means.

    BatchNorm keeps its random scale. The network is then bias-free, so LRP rules that
    conserve relevance layer by layer must give an input relevance summing to the logit.
    """
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.zero_()
    return model


def make_model(name: str, seed: int = 0, num_classes: int = 10, eps: float | None = None) -> torch.nn.Module:
    """A torchvision model with seeded random weights and random BatchNorm statistics, in eval mode.

    ``eps`` replaces every BatchNorm's epsilon (torchvision's default is 1e-5, 1e-3 for MobileNetV3).
    """
    torch.manual_seed(seed)
    model = randomize_batchnorm(build(name, num_classes=num_classes), seed).eval()
    if eps is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eps = eps
    return model


def composite_rules(model: torch.nn.Module, composite: str, zero_bias: bool = False, epsilon: float = 1e-6) -> dict:
    """Zennit 0.5.1's composite as an explicit ``{module name: rule}`` for ``model`` as it is now.

    ``composite`` is ``epsilon_gamma_box``, ``epsilon_plus_flat``, ``epsilon_alpha2_beta1``,
    ``epsilon_plus`` or ``epsilon`` (epsilon on every convolution too); Zennit's base map
    (activations ``pass``, Sum and average pooling ``norm``, BatchNorm ``pass``) comes first;
    the first-layer map applies to the first match in ``named_modules()`` order. With
    ``zero_bias`` every parametrised rule ignores the bias.
    """
    low, high = imagenet_bounds()
    zero = ("bias",) if zero_bias else ()
    conv_rule = {
        "epsilon_gamma_box": Gamma(gamma=0.25, zero_params=zero),
        "epsilon_plus_flat": ZPlus(zero_params=zero),
        "epsilon_plus": ZPlus(zero_params=zero),
        "epsilon_alpha2_beta1": AlphaBeta(alpha=2.0, beta=1.0, zero_params=zero),
        "epsilon": Epsilon(epsilon=epsilon, zero_params=zero),
    }[composite]
    first = {
        "epsilon_gamma_box": (CONVOLUTION, ZBox(low=low, high=high, zero_params=zero)),
        "epsilon_plus_flat": (CONVOLUTION + (torch.nn.Linear,), Flat(zero_params=zero)),
    }.get(composite)
    assignment = {}
    for name, module in model.named_modules():
        if first is not None and isinstance(module, first[0]):
            assignment[name] = first[1]
            first = None
        elif isinstance(module, ACTIVATION + PLUGIN_ACTIVATIONS + BATCHNORM):
            assignment[name] = Pass()
        elif isinstance(module, AVGPOOL + (Sum,)):
            assignment[name] = Norm()
        elif isinstance(module, CONVOLUTION):
            assignment[name] = conv_rule
        elif isinstance(module, torch.nn.Linear):
            assignment[name] = Epsilon(epsilon=epsilon, zero_params=zero)
    return assignment


def zplug_relevance(model, canonizers, composite, x, target, zero_bias=False, epsilon=1e-6):
    """Input relevance and output of ``model`` under zplug ``canonizers`` and ``composite``."""
    x = x.clone().requires_grad_()
    with applied_canonizers(model, canonizers):
        with attach_rules(model, composite_rules(model, composite, zero_bias, epsilon)):
            out = model(x)
            (relevance,) = torch.autograd.grad(out, x, one_hot(out, target))
    return relevance, out.detach()


def zennit_relevance(model, canonizer_cls, composite, x, target):
    """Input relevance and output of ``model`` under Zennit 0.5.1's composite and canonizer."""
    from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat

    low, high = imagenet_bounds()
    canonizers = [canonizer_cls()] if canonizer_cls is not None else None
    comp = {
        "epsilon_gamma_box": lambda: EpsilonGammaBox(low=low, high=high, canonizers=canonizers),
        "epsilon_plus_flat": lambda: EpsilonPlusFlat(canonizers=canonizers),
        "epsilon_alpha2_beta1": lambda: EpsilonAlpha2Beta1(canonizers=canonizers),
    }[composite]()
    x = x.clone().requires_grad_()
    with comp.context(model) as modified:
        out = modified(x)
        (relevance,) = torch.autograd.grad(out, x, one_hot(out, target))
    return relevance, out.detach()


def one_hot(out: torch.Tensor, target: int) -> torch.Tensor:
    """``grad_outputs`` selecting class ``target`` of every sample."""
    grad = torch.zeros_like(out)
    grad[:, target] = 1
    return grad


def snapshot(model: torch.nn.Module) -> tuple[list[str], dict[str, torch.Tensor], list[tuple[str, tuple]]]:
    """State to compare before and after a context: keys, tensors (cloned), instance attributes, hooks."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    extras = []
    for name, module in model.named_modules():
        hooks = (len(module._forward_hooks), len(module._forward_pre_hooks), len(module._backward_hooks))
        extras.append((name, (tuple(sorted(module.__dict__)), tuple(module._modules), hooks)))
    return list(state), state, extras


def assert_restored(model: torch.nn.Module, before) -> None:
    """The model is exactly as :func:`snapshot` recorded it (bit-identical tensors, same attributes)."""
    keys, state, extras = before
    after = model.state_dict()
    assert list(after) == keys
    for key, value in state.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    assert snapshot(model)[2] == extras


@pytest.fixture(scope="session")
def small_input() -> torch.Tensor:
    """A fixed 1x3x64x64 input inside the ImageNet z-box bounds."""
    generator = torch.Generator().manual_seed(1234)
    from zplug_torchvision import normalize

    return normalize(torch.rand(1, 3, 64, 64, generator=generator))


@pytest.fixture(scope="session")
def tv():
    """This module's helpers, for test modules (they cannot import conftest under importlib mode)."""
    return sys.modules[__name__]
