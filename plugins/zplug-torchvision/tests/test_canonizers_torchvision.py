"""Family canonizers: exact outputs, exact restoration, registrations, weights and input bounds."""

from __future__ import annotations

import pytest
import torch
from zplug_torchvision import (
    MODEL_NAMES,
    DenseNetCanonizer,
    MobileNetCanonizer,
    ResNetCanonizer,
    VGGCanonizer,
    build,
    imagenet_bounds,
    load_weights,
    normalize,
)

from zplug.canonizers import applied_canonizers
from zplug.engine import attach_rules
from zplug.layers import Sum
from zplug.registry import PluginRegistry
from zplug.rules import Epsilon

FAMILY = {
    "vgg11_bn": VGGCanonizer,
    "resnet18": ResNetCanonizer,
    "resnet50": ResNetCanonizer,
    "densenet121": DenseNetCanonizer,
    "mobilenet_v2": MobileNetCanonizer,
    "mobilenet_v3_small": MobileNetCanonizer,
    "efficientnet_b0": MobileNetCanonizer,
}
#: How many Sum modules each canonizer adds (one per residual connection, as torch.fx counts them).
SUMS = {"resnet18": 8, "resnet50": 16, "mobilenet_v2": 10, "mobilenet_v3_small": 6, "efficientnet_b0": 9}


@pytest.mark.parametrize("model_name", list(FAMILY))
def test_output_unchanged_and_restored(tv, small_input, model_name):
    model = tv.make_model(model_name)  # realistic BatchNorm eps
    # EfficientNet/MobileNetV3 with random weights are ill-conditioned in float32 (1e-6 input noise
    # moves the output by 1e-4), so those compare in float64, where rounding cannot hide a wrong merge.
    double = model_name in ("efficientnet_b0", "mobilenet_v3_small")
    tolerance = 1e-10 if double else 1e-5
    if double:
        model = model.double()
    x = small_input.to(next(model.parameters()).dtype)
    before = tv.snapshot(model)
    with torch.no_grad():
        expected = model(x)
        with FAMILY[model_name]().applied(model):
            out = model(x)
            sums = [n for n, m in model.named_modules() if isinstance(m, Sum)]
    assert float((out - expected).abs().max() / expected.abs().max()) < tolerance
    assert len(sums) == SUMS.get(model_name, 0)
    tv.assert_restored(model, before)


def test_restored_after_exception(tv, small_input):
    model = tv.shared_model("resnet18")
    before = tv.snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with applied_canonizers(model, [ResNetCanonizer()]):
            with attach_rules(model, {"layer1.0.residual_sum": Epsilon(), "fc": Epsilon()}):
                model(small_input.requires_grad_()).sum().backward()
                raise RuntimeError("boom")
    tv.assert_restored(model, before)


def test_describe_lists_the_changes():
    model = build("resnet18")
    lines = ResNetCanonizer().describe(model)
    assert lines[0] == "merge BatchNorm2d 'bn1' into Conv2d 'conv1'"
    assert "layer1.0 (BasicBlock): replace forward, residual_sum" in lines
    dense = DenseNetCanonizer().describe(build("densenet121"))
    assert "<model> (DenseNet): replace forward, zplug_pool, zplug_relu" in dense


def test_registrations_and_suggestions():
    registry = PluginRegistry(autoload=True)
    assert {"vgg", "resnet", "densenet", "mobilenet"} <= {
        e.name for e in registry.canonizers.entries() if e.plugin == "torchvision"
    }
    assert set(MODEL_NAMES) <= set(registry.models)
    assert {"vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "resnet18", "resnet50"} <= set(MODEL_NAMES)
    model = registry.models["resnet18"]()
    assert not model.training
    suggested = registry.suggest_canonizers(model)
    assert ("resnet", "torchvision") in [(n, p) for n, _, p in suggested]
    from torchvision.ops.misc import SqueezeExcitation

    assert SqueezeExcitation in registry.layer_types["activation"]


def test_torchvision_models_get_imagenets_input_convention():
    from zplug_torchvision import IMAGENET_MEAN, IMAGENET_STD

    from zplug.cli._models import convention_of
    from zplug.inputs import Preprocess

    registry = PluginRegistry(autoload=True)
    convention = convention_of(build("resnet18", num_classes=3), registry)
    assert convention.preprocess == Preprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert convention.source == "torchvision model: ImageNet convention (plugin 'torchvision')"
    low, high = convention.preprocess.bounds()
    torch.testing.assert_close(low, imagenet_bounds()[0])
    torch.testing.assert_close(high, imagenet_bounds()[1])
    assert convention_of(torch.nn.Linear(2, 2), registry).source == "default"  # not a torchvision model


def test_weights_round_trip(tmp_path):
    model = build("mobilenet_v2", num_classes=5)
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    loaded = build("mobilenet_v2", num_classes=5, weights=path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    torch.save({"state_dict": model.state_dict()}, path)
    assert load_weights(build("mobilenet_v2", num_classes=5), path) is not None
    torch.save({"fn": print}, path)  # pickled code: refused by weights_only=True
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_weights(build("mobilenet_v2", num_classes=5), path)


def test_imagenet_bounds_match_normalize():
    low, high = imagenet_bounds()
    assert low.shape == high.shape == (1, 3, 1, 1)
    images = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])
    normalized = normalize(images)
    assert torch.allclose(normalized[0:1], low.expand(1, 3, 2, 2))
    assert torch.allclose(normalized[1:2], high.expand(1, 3, 2, 2))
    assert bool((low < high).all())
