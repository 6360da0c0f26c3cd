"""Registers zplug's built-in canonizers and suggests them for ``canonizers = "auto"``."""

from __future__ import annotations

from zplug.canonizers.attention import FunctionalOps, MultiheadAttentionCanonizer
from zplug.canonizers.batchnorm import MergeBatchNorm, NamedMergeBatchNorm
from zplug.canonizers.pooling import FunctionalPooling
from zplug.canonizers.residual import ResidualSum
from zplug.hookspecs import hookimpl


@hookimpl
def zplug_register_canonizers():
    """Register the generic canonizers."""
    return [
        MergeBatchNorm, NamedMergeBatchNorm, ResidualSum, FunctionalPooling, MultiheadAttentionCanonizer, FunctionalOps
    ]


@hookimpl
def zplug_suggest_canonizers(model):
    """Suggest the generic canonizers a model needs.

    ``merge_batchnorm`` for BatchNorm, the attention canonizers, ``residual_sum`` for additions,
    ``functional_pooling`` for functional pooling and means.
    """
    import torch

    from zplug.canonizers.attention import has_attention
    from zplug.canonizers.batchnorm import BATCHNORM
    from zplug.canonizers.pooling import pooling_calls
    from zplug.canonizers.residual import additions

    suggestions = []
    batchnorms = [name for name, m in model.named_modules() if isinstance(m, BATCHNORM)]
    if batchnorms:
        suggestions.append(
            ("merge_batchnorm", f"{len(batchnorms)} BatchNorm layer(s), e.g. '{batchnorms[0]}', to merge")
        )
    attention = has_attention(model)
    heads = [name for name, m in model.named_modules() if isinstance(m, torch.nn.MultiheadAttention)]
    if heads:
        suggestions.append(("multihead_attention", f"{len(heads)} MultiheadAttention module(s), e.g. '{heads[0]}'"))
    functional = [name for name in attention if name not in heads]
    if functional:
        suggestions.append(
            ("functional_ops", f"functional attention operations (matmul, softmax) in {len(functional)} module(s), "
                               f"e.g. '{functional[0]}'")
        )
    found = additions(model)
    if found:
        where = found[0][0] or "the model's forward"
        suggestions.append(("residual_sum", f"{len(found)} tensor addition(s) (residual connections), e.g. in {where}"))
    pools = pooling_calls(model)
    if pools:
        suggestions.append(
            ("functional_pooling", f"functional pooling or means in {len(pools)} module(s), e.g. '{pools[0]}'")
        )
    return suggestions
