"""Refusing NaN and infinity: in inputs, in the model's output, and in the relevance.

A single NaN weight or an infinite stabiliser turns a heatmap flat grey without any other sign. The
checks here cost one reduction per tensor; only when something is not finite is the model run again
to name the first layer where it appeared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from zplug.errors import InputError, RelevanceError


def _finite(tensors: Sequence[torch.Tensor]) -> bool:
    return all(not t.is_floating_point() or bool(torch.isfinite(t).all()) for t in tensors)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def check_inputs_finite(inputs: torch.Tensor | Sequence[torch.Tensor]) -> None:
    """Raise :class:`InputError` if an input holds NaN or an infinite value."""
    xs = _tensors(inputs)
    for i, x in enumerate(xs):
        if not _finite([x]):
            which = "the input" if len(xs) == 1 else f"input {i}"
            raise InputError(f"{which} holds NaN or infinite values; replace them before explaining")


def first_nonfinite_module(model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> str | None:
    """Run ``model`` once and return ``"name (Type)"`` of the first module whose output is not finite."""
    found: list[str] = []

    def hook(name: str):
        def record(module: torch.nn.Module, args: Any, output: Any) -> None:
            if not found and not _finite(_tensors(output)):
                found.append(f"'{name}' ({type(module).__name__})")

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def check_output_finite(model: torch.nn.Module, inputs: Sequence[torch.Tensor], output: torch.Tensor) -> None:
    """Raise :class:`RelevanceError` naming the first layer if the explained output is not finite."""
    if _finite([output]):
        return
    where = first_nonfinite_module(model, inputs)
    at = f"; it first appears in the output of layer {where}" if where else ""
    raise RelevanceError(
        f"the model's output holds NaN or infinite values{at}; check the weights (e.g. with torch.isfinite) "
        "and the inputs"
    )


class _FirstNonFinite:
    """Engine observer remembering the first rule (in backward order) that returned non-finite relevance."""

    def __init__(self) -> None:
        self.where: str | None = None

    def __call__(self, binding: Any, call: Any, grad_outputs: tuple, relevance: tuple) -> None:
        if self.where is None and _finite(list(grad_outputs)) and not _finite([r for r in relevance if r is not None]):
            self.where = f"'{binding.name}' (rule {binding.rule!r})"


def check_relevance_finite(relevance: Any, rerun: Callable[[Callable[..., None]], Any]) -> None:
    """Raise :class:`RelevanceError` if ``relevance`` is not finite, naming the first rule that made it so.

    ``rerun(observer)`` repeats the explanation with ``observer`` attached to the engine; it runs only
    when the relevance is not finite.
    """
    if _finite(_tensors(relevance)):
        return
    first = _FirstNonFinite()
    rerun(first)
    at = (
        f"; it first appears in the relevance of layer {first.where}" if first.where
        else "; no rule produced it, so it comes from an operation between ruled layers (see the ledger)"
    )
    raise RelevanceError(
        f"the relevance holds NaN or infinite values{at}; check the rule parameters (stabilisers, bounds) and weights"
    )


__all__ = ("check_inputs_finite", "check_output_finite", "check_relevance_finite", "first_nonfinite_module")
