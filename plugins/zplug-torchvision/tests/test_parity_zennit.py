"""zplug + zplug-torchvision canonizers against Zennit 0.5.1 + zennit.torchvision canonizers.

Zennit 0.5.1 turns a merged BatchNorm into ``x / sqrt(1 + eps)`` instead of the identity (it
keeps ``eps``), so with torchvision's eps of 1e-5 its outputs drift by up to 1.3e-4 on ResNet50
and its relevance by up to 1.2e-3 on VGG11-BN (measured). zplug's merge is exact. As in Zennit's
own canonizer tests, the parity models therefore use a negligible BatchNorm eps (1e-30);
``test_canonizers_torchvision.py`` checks the realistic eps against the unmerged model.
"""

from __future__ import annotations

import pytest
import torch
from zplug_torchvision import ResNetCanonizer, VGGCanonizer

MODELS = {"vgg11_bn": "vgg", "vgg16": "vgg", "resnet18": "resnet", "resnet50": "resnet"}
COMPOSITES = ("epsilon_gamma_box", "epsilon_plus_flat", "epsilon_alpha2_beta1")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_relevance_matches_zennit(tv, small_input, model_name, composite):
    from zennit.torchvision import ResNetCanonizer as ZennitResNet
    from zennit.torchvision import VGGCanonizer as ZennitVGG

    model = tv.shared_model(model_name, eps=1e-30)
    before = tv.snapshot(model)
    family = MODELS[model_name]
    ours = VGGCanonizer() if family == "vgg" else ResNetCanonizer()
    theirs = ZennitVGG if family == "vgg" else ZennitResNet
    relevance, out = tv.zplug_relevance(model, [ours], composite, small_input, target=3)
    tv.assert_restored(model, before)
    expected, expected_out = tv.zennit_relevance(model, theirs, composite, small_input, target=3)
    assert relative_error(out, expected_out) < 1e-5
    assert relative_error(relevance, expected) < 1e-4
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
