"""Canonizers: temporary, exactly reverted rewrites that make a model fit for LRP."""

from zplug.canonizers.attention import FunctionalOps, MultiheadAttentionCanonizer
from zplug.canonizers.attribute import AttributeCanonizer
from zplug.canonizers.base import (
    Canonizer,
    CanonizerError,
    CompositeCanonizer,
    applied_canonizers,
    auto_canonizers,
)
from zplug.canonizers.batchnorm import MergeBatchNorm, NamedMergeBatchNorm, merged_params
from zplug.canonizers.pooling import FunctionalPooling
from zplug.canonizers.residual import ResidualSum
from zplug.canonizers.rewrite import ForwardRewrite, Rewrite

__all__ = (
    "AttributeCanonizer",
    "Canonizer",
    "CanonizerError",
    "CompositeCanonizer",
    "ForwardRewrite",
    "FunctionalOps",
    "FunctionalPooling",
    "MergeBatchNorm",
    "MultiheadAttentionCanonizer",
    "NamedMergeBatchNorm",
    "ResidualSum",
    "Rewrite",
    "applied_canonizers",
    "auto_canonizers",
    "merged_params",
)
