"""Modules that make functional operations visible to rules."""

from __future__ import annotations

import torch


class Sum(torch.nn.Module):
    """Add tensors, so that a rule (usually ``norm``) can distribute relevance over the summands.

    Called with one tensor, it sums over ``dim`` (Zennit's convention: summands stacked on
    the last dimension). Called with several tensors, it adds them (with broadcasting);
    zplug then attributes relevance to each summand separately.

    Parameters
    ----------
    dim : int
        The dimension to sum over when called with a single tensor.
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Return the sum over ``dim`` of one tensor, or the sum of several tensors."""
        if len(inputs) == 1:
            return torch.sum(inputs[0], dim=self.dim)
        total = inputs[0]
        for other in inputs[1:]:
            total = total + other
        return total

    def extra_repr(self) -> str:
        """Show ``dim`` in the module's repr."""
        return f"dim={self.dim}"


class Mean(torch.nn.Module):
    """The mean over ``dim`` (all dimensions if ``None``): ``x.mean(dim, keepdim)`` as a module.

    An average like any pooling layer: it is an ``avgpool`` layer, so presets give it the
    ``norm`` rule (each input's share of the mean).

    Parameters
    ----------
    dim : int, tuple of int, or None
        The dimensions to average over.
    keepdim : bool
        Keep the averaged dimensions (with size 1).
    """

    def __init__(self, dim: int | tuple[int, ...] | None = None, keepdim: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the mean of ``x`` over ``dim``."""
        if self.dim is None:
            return x.mean()
        return x.mean(self.dim, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        """Show ``dim`` and ``keepdim``."""
        return f"dim={self.dim}, keepdim={self.keepdim}"


# Modules for transformers' functional operations live in their own module; re-exported here.
from zplug.functional_layers import MatMul, Mul, Normalize, ScaledDotProductAttention  # noqa: E402

__all__ = ("MatMul", "Mean", "Mul", "Normalize", "ScaledDotProductAttention", "Sum")
