"""zplug-torchvision: canonizers, model factories and ImageNet conventions for torchvision models."""

from zplug_torchvision.canonizers import (
    DenseNetCanonizer,
    MobileNetCanonizer,
    ResNetCanonizer,
    VGGCanonizer,
)
from zplug_torchvision.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODEL_NAMES,
    build,
    imagenet_bounds,
    load_weights,
    normalize,
)
from zplug_torchvision.transformers import (
    ConvNeXtCanonizer,
    MaxVitCanonizer,
    SwinCanonizer,
    VisionTransformerCanonizer,
)

__version__ = "0.1.0"

__all__ = (
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_NAMES",
    "ConvNeXtCanonizer",
    "DenseNetCanonizer",
    "MaxVitCanonizer",
    "MobileNetCanonizer",
    "ResNetCanonizer",
    "SwinCanonizer",
    "VGGCanonizer",
    "VisionTransformerCanonizer",
    "build",
    "imagenet_bounds",
    "load_weights",
    "normalize",
)
