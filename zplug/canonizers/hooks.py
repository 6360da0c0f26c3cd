"""Registers zplug's built-in canonizers and suggests them for ``canonizers = "auto"``."""

from __future__ import annotations

from zplug.canonizers.batchnorm import MergeBatchNorm, NamedMergeBatchNorm
from zplug.canonizers.residual import ResidualSum
from zplug.hookspecs import hookimpl


@hookimpl
def zplug_register_canonizers():
    """Register the generic canonizers."""
    return [MergeBatchNorm, NamedMergeBatchNorm, ResidualSum]


@hookimpl
def zplug_suggest_canonizers(model):
    """Suggest ``merge_batchnorm`` for models with BatchNorm and ``residual_sum`` for tensor additions."""
    from zplug.canonizers.batchnorm import BATCHNORM
    from zplug.canonizers.residual import additions
    from zplug.errors import NotTraceableError

    suggestions = []
    batchnorms = [name for name, m in model.named_modules() if isinstance(m, BATCHNORM)]
    if batchnorms:
        suggestions.append(
            ("merge_batchnorm", f"{len(batchnorms)} BatchNorm layer(s), e.g. '{batchnorms[0]}', to merge")
        )
    try:
        found = additions(model)
    except NotTraceableError:
        found = []
    if found:
        where = found[0][0] or "the model's forward"
        suggestions.append(("residual_sum", f"{len(found)} tensor addition(s) (residual connections), e.g. in {where}"))
    return suggestions
