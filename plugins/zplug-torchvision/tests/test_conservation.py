"""Conservation: in bias-free networks, the input relevance sums to the target logit.

Relevance starts as ``logit * one_hot`` and every rule ignores biases; BatchNorm shifts and
running means are zero, so the network has no additive constants and every correctly
canonized network conserves. Without canonizer the same models create relevance out of
nothing (residual additions copy it to both summands), which these tests also pin.
"""

from __future__ import annotations

import pytest
import torch

from zplug.canonizers import auto_canonizers
from zplug.registry import PluginRegistry

EPSILON = 1e-9  # tiny, so that epsilon itself absorbs nothing measurable
#: epsilon_plus (z+ on convolutions) conserves on ReLU networks; in linear bottlenecks
#: (MobileNetV3, EfficientNet) z+ drops relevance where a neuron has only negative
#: contributions, a property of the rule (see the plugin README), so those use epsilon.
FAMILIES = {
    "vgg11": "epsilon_plus",
    "vgg11_bn": "epsilon_plus",
    "resnet18": "epsilon_plus",
    "resnet50": "epsilon_plus",
    "densenet121": "epsilon_plus",
    "mobilenet_v2": "epsilon_plus",
    "mobilenet_v3_small": "epsilon",
    "efficientnet_b0": "epsilon",
}


@pytest.fixture(scope="module")
def registry():
    return PluginRegistry(autoload=True)


@pytest.mark.parametrize("model_name", list(FAMILIES))
def test_relevance_sum_equals_logit(tv, registry, small_input, model_name):
    model = tv.zero_biases(tv.make_model(model_name))
    chosen = auto_canonizers(model, registry)
    assert [plugin for _, _, plugin in chosen] == ["torchvision"]  # the family canonizer covers the generic ones
    canonizers = [registry.canonizers[name]() for name, _, _ in chosen]
    x = small_input.clone().requires_grad_()
    with tv.applied_canonizers(model, canonizers):
        assignment = tv.composite_rules(model, FAMILIES[model_name], zero_bias=True, epsilon=EPSILON)
        with tv.attach_rules(model, assignment):
            out = model(x)
            logit = out[0, 3]
            (relevance,) = torch.autograd.grad(out, x, tv.one_hot(out, 3) * logit.detach())
    logit = float(logit.detach())
    assert abs(float(relevance.sum()) - logit) <= 1e-3 * abs(logit)


@pytest.mark.parametrize("model_name", ["resnet18", "mobilenet_v2"])
def test_without_canonizer_relevance_is_created(tv, small_input, model_name):
    # The failure the canonizers exist for: every residual addition doubles the relevance.
    model = tv.zero_biases(tv.make_model(model_name))
    relevance, _ = tv.zplug_relevance(model, [], "epsilon_plus", small_input, 3, zero_bias=True, epsilon=EPSILON)
    assert float(relevance.sum()) > 10
