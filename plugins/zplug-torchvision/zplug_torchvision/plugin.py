"""The zplug plugin module (entry point ``torchvision``): registrations and canonizer suggestions."""

from __future__ import annotations

import torch
from torchvision.models.densenet import DenseNet
from torchvision.models.efficientnet import EfficientNet
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.mobilenetv3 import MobileNetV3
from torchvision.models.resnet import ResNet
from torchvision.models.vgg import VGG
from torchvision.ops.misc import SqueezeExcitation
from torchvision.ops.stochastic_depth import StochasticDepth

from zplug import hookimpl
from zplug_torchvision.canonizers import CANONIZERS
from zplug_torchvision.models import IMAGENET_MEAN, IMAGENET_STD, factories

_FAMILIES = (
    (VGG, "vgg", "torchvision VGG"),
    (ResNet, "resnet", "torchvision ResNet (residual blocks)"),
    (DenseNet, "densenet", "torchvision DenseNet (conv->BatchNorm pairs, functional ReLU and pooling)"),
    (MobileNetV2, "mobilenet", "torchvision MobileNetV2 (inverted residuals, functional pooling)"),
    (MobileNetV3, "mobilenet", "torchvision MobileNetV3 (inverted residuals, squeeze-excitation)"),
    (EfficientNet, "mobilenet", "torchvision EfficientNet (MBConv residuals, squeeze-excitation)"),
)


@hookimpl
def zplug_register_canonizers():
    """Register the model-family canonizers."""
    return list(CANONIZERS)


@hookimpl
def zplug_register_models():
    """Register model factories by torchvision name (random weights)."""
    return factories()


@hookimpl
def zplug_register_layer_types():
    """Squeeze-excitation is a multiplicative gate: relevance passes through it to the gated signal.

    It joins the ``activation`` kind, so presets that give activations ``pass`` treat it as one
    element-wise layer (input and output have the same shape); see the README.
    """
    return {"activation": (SqueezeExcitation,), "gate": (SqueezeExcitation,)}


@hookimpl
def zplug_input_convention(model: torch.nn.Module):
    """ImageNet's convention for torchvision models: resize 256, crop 224, ImageNet's mean and std.

    That is how torchvision's ImageNet classifiers were trained (and Zennit's example script
    prepares their inputs). A model counts as torchvision's if its class is defined in a
    ``torchvision`` module.
    """
    if type(model).__module__.split(".")[0] != "torchvision":
        return None
    return {"resize": 256, "crop": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "source": "torchvision model: ImageNet convention"}


@hookimpl
def zplug_register_op_treatments():
    """``StochasticDepth`` is the identity in evaluation mode: its plain gradient is exact (coverage)."""
    return {StochasticDepth: "linear"}


@hookimpl
def zplug_suggest_canonizers(model: torch.nn.Module):
    """Suggest the family canonizer for torchvision models (exact class match)."""
    for cls, name, what in _FAMILIES:
        if type(model) is cls:
            return [(name, f"the model is a {what}")]
    return None
