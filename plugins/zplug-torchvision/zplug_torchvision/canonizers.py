"""Canonizers for torchvision model families.

Each family canonizer is a composite: BatchNorm merging (traced, see
:class:`zplug.canonizers.MergeBatchNorm`) followed by replacement ``forward`` methods that
route the family's functional operations (residual additions, functional ReLU and pooling)
through modules that rules can be attached to. The plugin README justifies each treatment.

Defining the canonizers imports neither torch nor torchvision: the torchvision classes are
looked up when a model is canonized (a model of them exists only once torchvision is imported).
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from zplug.canonizers import AttributeCanonizer, Canonizer, CompositeCanonizer, MergeBatchNorm
from zplug.canonizers.attribute import bound

if TYPE_CHECKING:
    import torch
    from torchvision.models.densenet import DenseNet
    from torchvision.models.efficientnet import FusedMBConv, MBConv
    from torchvision.models.mobilenetv2 import InvertedResidual as InvertedResidualV2
    from torchvision.models.mobilenetv2 import MobileNetV2
    from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
    from torchvision.models.resnet import BasicBlock, Bottleneck

#: The child name under which the ``Sum`` of a residual block is registered while canonized.
SUM = "residual_sum"


# -- replacement forwards (``self`` is the block) ----------------------------------------------
def _basic_block_forward(self: BasicBlock, x: torch.Tensor) -> torch.Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(getattr(self, SUM)(identity, out))


def _bottleneck_forward(self: Bottleneck, x: torch.Tensor) -> torch.Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(getattr(self, SUM)(identity, out))


def _inverted_residual_v2_forward(self: InvertedResidualV2, x: torch.Tensor) -> torch.Tensor:
    out = self.conv(x)
    return getattr(self, SUM)(x, out) if self.use_res_connect else out


def _inverted_residual_v3_forward(self: InvertedResidualV3 | MBConv | FusedMBConv, x: torch.Tensor) -> torch.Tensor:
    out = self.block(x)
    if not self.use_res_connect:
        return out
    if hasattr(self, "stochastic_depth"):  # EfficientNet's (Fused)MBConv; the identity in evaluation mode
        out = self.stochastic_depth(out)
    return getattr(self, SUM)(x, out)


def _densenet_forward(self: DenseNet, x: torch.Tensor) -> torch.Tensor:
    out = self.zplug_relu(self.features(x))
    import torch

    out = torch.flatten(self.zplug_pool(out), 1)
    return self.classifier(out)


def _mobilenet_v2_forward(self: MobileNetV2, x: torch.Tensor) -> torch.Tensor:
    import torch

    out = torch.flatten(self.zplug_pool(self.features(x)), 1)
    return self.classifier(out)


@functools.cache
def _block_forwards() -> dict[type, Any]:
    """``{block class: replacement forward}`` (imports torchvision's model classes)."""
    from torchvision.models.efficientnet import FusedMBConv, MBConv
    from torchvision.models.mobilenetv2 import InvertedResidual as InvertedResidualV2
    from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return {
        FusedMBConv: _inverted_residual_v3_forward,
        BasicBlock: _basic_block_forward,
        Bottleneck: _bottleneck_forward,
        InvertedResidualV2: _inverted_residual_v2_forward,
        InvertedResidualV3: _inverted_residual_v3_forward,
        MBConv: _inverted_residual_v3_forward,
    }


def _is_torchvision(module: torch.nn.Module) -> bool:
    # A torchvision class exists (and its module is imported) only once torchvision is imported.
    return type(module).__module__.split(".")[0] == "torchvision" and "torchvision.models" in sys.modules


def residual_block_attributes(name: str, module: torch.nn.Module) -> dict[str, Any] | None:
    """Attributes for torchvision's residual blocks: a ``Sum`` child and a forward that uses it."""
    if getattr(module, "use_res_connect", True) is False or not _is_torchvision(module):
        return None  # an inverted residual block without residual connection: nothing to route
    forward = _block_forwards().get(type(module))
    if forward is None:
        return None
    from zplug.layers import Sum

    return {SUM: Sum(), "forward": bound(forward, module)}


def model_forward_attributes(name: str, module: torch.nn.Module) -> dict[str, Any] | None:
    """Attributes for models whose own forward uses functional ReLU / pooling (DenseNet, MobileNetV2)."""
    if not _is_torchvision(module):
        return None
    import torch
    from torchvision.models.densenet import DenseNet
    from torchvision.models.mobilenetv2 import MobileNetV2

    if type(module) is DenseNet:
        return {
            "zplug_relu": torch.nn.ReLU(),
            "zplug_pool": torch.nn.AdaptiveAvgPool2d((1, 1)),
            "forward": bound(_densenet_forward, module),
        }
    if type(module) is MobileNetV2:
        return {"zplug_pool": torch.nn.AdaptiveAvgPool2d((1, 1)), "forward": bound(_mobilenet_v2_forward, module)}
    return None


def _residual_blocks() -> Canonizer:
    return AttributeCanonizer(attributes=residual_block_attributes)


def _model_forward() -> Canonizer:
    return AttributeCanonizer(attributes=model_forward_attributes)


# -- the family canonizers ---------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class VGGCanonizer(CompositeCanonizer):
    """torchvision VGG: merge each BatchNorm into the convolution before it (nothing else to do)."""

    name: ClassVar[str] = "vgg"
    summary: ClassVar[str] = "torchvision VGG: merge BatchNorm into the preceding convolution"
    covers: ClassVar[tuple[str, ...]] = ("merge_batchnorm",)

    def parts(self) -> tuple[Canonizer, ...]:
        """BatchNorm merging only."""
        return (MergeBatchNorm(),)


@attrs.frozen(kw_only=True)
class ResNetCanonizer(CompositeCanonizer):
    """torchvision ResNet / ResNeXt / Wide ResNet: merge BatchNorm, route ``identity + out`` through ``Sum``."""

    name: ClassVar[str] = "resnet"
    summary: ClassVar[str] = "torchvision ResNet: merge BatchNorm, residual additions through Sum modules"
    covers: ClassVar[tuple[str, ...]] = ("merge_batchnorm", "residual_sum")

    def parts(self) -> tuple[Canonizer, ...]:
        """BatchNorm merging, then the residual-block forwards."""
        return (MergeBatchNorm(), _residual_blocks())


@attrs.frozen(kw_only=True)
class DenseNetCanonizer(CompositeCanonizer):
    """torchvision DenseNet: merge BatchNorm after convolutions; final functional ReLU and pooling as modules."""

    name: ClassVar[str] = "densenet"
    summary: ClassVar[str] = "torchvision DenseNet: merge conv->BatchNorm, final ReLU and pooling as modules"
    covers: ClassVar[tuple[str, ...]] = ("merge_batchnorm", "residual_sum", "functional_pooling")

    def parts(self) -> tuple[Canonizer, ...]:
        """BatchNorm merging, then the model's forward."""
        return (MergeBatchNorm(), _model_forward())


@attrs.frozen(kw_only=True)
class MobileNetCanonizer(CompositeCanonizer):
    """torchvision MobileNetV2/V3, EfficientNet V1/V2: merge BatchNorm, inverted-residual additions through ``Sum``."""

    name: ClassVar[str] = "mobilenet"
    summary: ClassVar[str] = "torchvision MobileNetV2/V3, EfficientNet: merge BatchNorm, residuals through Sum"
    covers: ClassVar[tuple[str, ...]] = ("merge_batchnorm", "residual_sum", "functional_pooling")

    def parts(self) -> tuple[Canonizer, ...]:
        """BatchNorm merging, block forwards, model forward."""
        return (MergeBatchNorm(), _residual_blocks(), _model_forward())


CANONIZERS = (VGGCanonizer, ResNetCanonizer, DenseNetCanonizer, MobileNetCanonizer)

__all__ = (
    "CANONIZERS",
    "DenseNetCanonizer",
    "MobileNetCanonizer",
    "ResNetCanonizer",
    "VGGCanonizer",
    "model_forward_attributes",
    "residual_block_attributes",
)
