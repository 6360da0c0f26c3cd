"""Refusing models in training mode whose forward pass would change them (BatchNorm running statistics).

A BatchNorm layer in training mode normalises with each batch's statistics and, on every forward
pass, moves its ``running_mean``/``running_var`` towards them (and counts the batch). Explaining
such a model would change it silently and give batch-dependent explanations, so
:func:`zplug.explain` refuses it before anything runs and asks for ``model.eval()``. Modules
without running statistics (e.g. Dropout) do not change the model and are not checked here.
"""

from __future__ import annotations

from typing import Any

from zplug.errors import ModelMismatchError


def updating_modules(model: Any) -> list[tuple[str, Any]]:
    """Return ``(name, module)`` of each module in training mode that keeps running statistics."""
    found = []
    for name, module in model.named_modules():
        if module.training and any(b is not None for n, b in module.named_buffers(recurse=False)
                                   if n.startswith("running_")):
            found.append((name, module))
    return found


def check_eval_mode(model: Any) -> None:
    """Raise :class:`ModelMismatchError` if a forward pass of ``model`` would update running statistics.

    The model is not changed.
    """
    found = updating_modules(model)
    if not found:
        return
    name, module = found[0]
    where = f"{type(module).__name__} '{name}'" if name else f"the model ({type(module).__name__})"
    others = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    raise ModelMismatchError(
        f"the model is in training mode: {where}{others} would update its running statistics on every forward pass, "
        "changing the model and normalising with batch statistics; call model.eval() before explaining"
    )


__all__ = ("check_eval_mode", "updating_modules")
