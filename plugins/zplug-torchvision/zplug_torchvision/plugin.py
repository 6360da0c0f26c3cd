"""The zplug plugin module (entry point ``torchvision``): registrations and canonizer suggestions.

Registering imports neither torch nor torchvision (``zplug presets`` and ``zplug check`` stay
fast): classes are named by their paths, and torchvision is imported when one of its models is
built or canonized. A model of a torchvision class can only exist once torchvision is imported,
so the model hooks answer from the model's class alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zplug import hookimpl
from zplug_torchvision.canonizers import CANONIZERS
from zplug_torchvision.models import IMAGENET_MEAN, IMAGENET_STD, factories
from zplug_torchvision.transformers import CANONIZERS as TRANSFORMER_CANONIZERS

if TYPE_CHECKING:
    import torch

#: ``(class path, canonizer, what the model is)``: the exact classes each family canonizer is for.
_FAMILIES = (
    ("torchvision.models.vgg.VGG", "vgg", "torchvision VGG"),
    ("torchvision.models.resnet.ResNet", "resnet", "torchvision ResNet (residual blocks)"),
    ("torchvision.models.densenet.DenseNet", "densenet",
     "torchvision DenseNet (conv->BatchNorm pairs, functional ReLU and pooling)"),
    ("torchvision.models.mobilenetv2.MobileNetV2", "mobilenet",
     "torchvision MobileNetV2 (inverted residuals, functional pooling)"),
    ("torchvision.models.mobilenetv3.MobileNetV3", "mobilenet",
     "torchvision MobileNetV3 (inverted residuals, squeeze-excitation)"),
    ("torchvision.models.efficientnet.EfficientNet", "mobilenet",
     "torchvision EfficientNet (MBConv residuals, squeeze-excitation)"),
    ("torchvision.models.vision_transformer.VisionTransformer", "vit",
     "torchvision VisionTransformer (MultiheadAttention, residuals)"),
    ("torchvision.models.swin_transformer.SwinTransformer", "swin",
     "torchvision SwinTransformer (window attention, residuals)"),
    ("torchvision.models.maxvit.MaxVit", "maxvit", "torchvision MaxViT (MBConv, window and grid attention)"),
    ("torchvision.models.convnext.ConvNeXt", "convnext", "torchvision ConvNeXt (layer scale, residuals)"),
)  # fmt: skip
SQUEEZE_EXCITATION = "torchvision.ops.misc.SqueezeExcitation"


def _class_path(model: torch.nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


@hookimpl
def zplug_register_canonizers():
    """Register the model-family canonizers."""
    return [*CANONIZERS, *TRANSFORMER_CANONIZERS]


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
    return {"activation": (SQUEEZE_EXCITATION,), "gate": (SQUEEZE_EXCITATION,)}


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
    return {"torchvision.ops.stochastic_depth.StochasticDepth": "linear"}


@hookimpl
def zplug_suggest_canonizers(model: torch.nn.Module):
    """Suggest the family canonizer for torchvision models (exact class match)."""
    path = _class_path(model)
    for family, name, what in _FAMILIES:
        if path == family:
            return [(name, f"the model is a {what}")]
    return None
