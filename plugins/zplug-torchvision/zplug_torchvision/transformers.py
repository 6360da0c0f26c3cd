"""Canonizers for torchvision's vision transformers and ConvNeXt.

* ``vit`` (``VisionTransformer``): ``torch.nn.MultiheadAttention`` rewritten with modules
  (zplug's ``multihead_attention``), then the position-embedding and residual additions through
  ``Sum`` modules (``functional_ops``).
* ``swin`` (``SwinTransformer``, v1 and v2): the window attention, which torchvision computes
  in one function from the layers' weights, rewritten with ``qkv``/``proj`` module calls,
  ``MatMul`` (scale folded in), a ``Sum`` for the relative-position bias and the shift mask,
  ``Softmax`` and, for v2's cosine attention, ``Normalize`` and a constant logit scale; then
  the residual additions (``functional_ops``).
* ``maxvit`` (``MaxVit``): BatchNorm merged, the relative-position attention rewritten like
  Swin's (torchvision writes it with ``einsum``), then residuals and squeeze-excitation gates.
* ``convnext`` (``ConvNeXt``): the layer scale (a constant factor, through ``Mul``) and the
  residual additions (``functional_ops``); ``LayerNorm2d`` is a ``normalization`` layer.

Registering these canonizers imports neither torch nor torchvision (the rewritten forwards live in
:mod:`zplug_torchvision._window_attention`). Every rewrite is checked against the original forward
on its first call (:class:`zplug.canonizers.rewrite.ForwardRewrite`); shifts (``torch.roll``), window partitions,
padding and permutations keep their plain gradient, which moves relevance without changing it.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, ClassVar

import attrs

from zplug.canonizers import (
    Canonizer,
    CompositeCanonizer,
    ForwardRewrite,
    FunctionalOps,
    MergeBatchNorm,
    MultiheadAttentionCanonizer,
    Rewrite,
)

if TYPE_CHECKING:
    import torch


@attrs.frozen(kw_only=True)
class WindowAttention(ForwardRewrite):
    """Rewrite torchvision's Swin (v1, v2) and MaxViT attention modules with zplug modules."""

    name: ClassVar[str] = "torchvision_window_attention"
    summary: ClassVar[str] = "Swin / MaxViT attention: qkv, MatMul, Sum (position bias), Softmax, MatMul, proj"

    def rewrites(self, model: torch.nn.Module) -> list[Rewrite]:
        """One rewrite per attention module of an exact known class."""
        from zplug_torchvision._window_attention import window_attention_rewrites

        return window_attention_rewrites(model)


# -- the family canonizers -------------------------------------------------------------------------
_COVERS = ("merge_batchnorm", "residual_sum", "multihead_attention", "functional_ops")


@attrs.frozen(kw_only=True)
class _Sequential(CompositeCanonizer):
    """A composite whose description of each part sees the model as the parts before it left it."""

    def describe(self, model: torch.nn.Module) -> list[str]:
        """Describe each part with the earlier parts applied (no forward pass runs)."""
        lines: list[str] = []
        with ExitStack() as stack:
            for part in self.parts():
                lines += part.describe(model)
                stack.enter_context(part.applied(model))
        return lines


@attrs.frozen(kw_only=True)
class VisionTransformerCanonizer(_Sequential):
    """torchvision ``VisionTransformer``: attention as modules, position embedding and residuals through ``Sum``."""

    name: ClassVar[str] = "vit"
    summary: ClassVar[str] = "torchvision ViT: MultiheadAttention as modules, additions through Sum"
    covers: ClassVar[tuple[str, ...]] = _COVERS

    def parts(self) -> tuple[Canonizer, ...]:
        """The attention rewrite, then the additions."""
        return (MultiheadAttentionCanonizer(), FunctionalOps())


@attrs.frozen(kw_only=True)
class SwinCanonizer(_Sequential):
    """torchvision ``SwinTransformer`` (v1, v2): window attention as modules, residuals through ``Sum``."""

    name: ClassVar[str] = "swin"
    summary: ClassVar[str] = "torchvision Swin v1/v2: window attention as modules, residuals through Sum"
    covers: ClassVar[tuple[str, ...]] = _COVERS

    def parts(self) -> tuple[Canonizer, ...]:
        """The window attention, then the additions."""
        return (WindowAttention(), FunctionalOps())


@attrs.frozen(kw_only=True)
class MaxVitCanonizer(_Sequential):
    """torchvision ``MaxVit``: BatchNorm merged, attention as modules, residuals and gates as modules."""

    name: ClassVar[str] = "maxvit"
    summary: ClassVar[str] = "torchvision MaxViT: merge BatchNorm, attention as modules, residuals through Sum"
    covers: ClassVar[tuple[str, ...]] = _COVERS

    def parts(self) -> tuple[Canonizer, ...]:
        """BatchNorm merging, the attention, then the additions and products."""
        return (MergeBatchNorm(), WindowAttention(), FunctionalOps())


@attrs.frozen(kw_only=True)
class ConvNeXtCanonizer(_Sequential):
    """torchvision ``ConvNeXt``: the layer scale through ``Mul``, residual additions through ``Sum``."""

    name: ClassVar[str] = "convnext"
    summary: ClassVar[str] = "torchvision ConvNeXt: layer scale through Mul, residuals through Sum"
    covers: ClassVar[tuple[str, ...]] = _COVERS

    def parts(self) -> tuple[Canonizer, ...]:
        """The additions and products."""
        return (FunctionalOps(),)


CANONIZERS = (VisionTransformerCanonizer, SwinCanonizer, MaxVitCanonizer, ConvNeXtCanonizer)

__all__ = (
    "CANONIZERS",
    "ConvNeXtCanonizer",
    "MaxVitCanonizer",
    "SwinCanonizer",
    "VisionTransformerCanonizer",
    "WindowAttention",
)
