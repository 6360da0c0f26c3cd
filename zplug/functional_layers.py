"""Modules for the functional operations of transformers, so that rules can sit on them.

Attention multiplies two activations (``q @ k^T``, ``attn @ v``), gated MLPs multiply a gate
with a value, and normalisations divide by a statistic of their own input. Written as
functions, these operations have no module, so no rule sees them and the plain gradient
passes through (which is not a relevance rule for any of them). Canonizers
(:mod:`zplug.canonizers.attention`) route them through the modules below for the duration
of an explanation; presets then give them rules by layer type (``bilinear``, ``gate``,
``normalization``).

Each module computes exactly what the function it stands for computes. ``value`` tells the
``product`` rule which operand is the value (the tensor whose content the product passes
on); CP-LRP hands all relevance to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


class MatMul(torch.nn.Module):
    """``torch.matmul(a, b)``, optionally times a constant ``scale``.

    Parameters
    ----------
    scale : float or None
        A constant factor of the product (attention's ``1 / sqrt(d)``); part of the module,
        so that no functional multiplication is left between the product and the softmax.
    value : int or None
        Which operand is the value: ``1`` for ``attn @ v``; ``None`` for products without a
        value operand, such as the attention scores ``q @ k^T``.
    """

    def __init__(self, scale: float | None = None, value: int | None = None) -> None:
        super().__init__()
        if value not in (None, 0, 1):
            raise ValueError(f"MatMul: value must be None, 0 or 1 (got {value!r})")
        self.scale = scale
        self.value = value

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Return ``scale * (a @ b)`` (or ``a @ b`` without a scale)."""
        out = torch.matmul(a, b)
        return out if self.scale is None else out * self.scale

    def extra_repr(self) -> str:
        """Show the scale and the value operand."""
        return f"scale={self.scale}, value={self.value}"


class Mul(torch.nn.Module):
    """The element-wise product of its operands (tensors, broadcast, and numbers).

    A gate ``act(g) * u`` is ``Mul(value=1)(act(g), u)``; a constant factor (a layer scale, a
    number) is an operand like any other: rules give relevance only to operands that carry it.

    Parameters
    ----------
    value : int or None
        The position of the value operand (the gated signal), or ``None`` if unknown.
    """

    def __init__(self, value: int | None = None) -> None:
        super().__init__()
        self.value = value

    def forward(self, *operands: torch.Tensor | float) -> torch.Tensor:
        """Return the product of the operands."""
        if not operands:
            raise TypeError("Mul needs at least one operand")
        out = operands[0]
        for other in operands[1:]:
            out = out * other
        return out

    def extra_repr(self) -> str:
        """Show the value operand."""
        return f"value={self.value}"


class Normalize(torch.nn.Module):
    """``torch.nn.functional.normalize``: divide by the ``p``-norm over ``dim`` (at least ``eps``).

    Parameters
    ----------
    p, dim, eps
        As in :func:`torch.nn.functional.normalize`.
    """

    def __init__(self, p: float = 2.0, dim: int = -1, eps: float = 1e-12) -> None:
        super().__init__()
        self.p = p
        self.dim = dim
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x / max(||x||_p, eps)`` along ``dim``."""
        return F.normalize(x, p=self.p, dim=self.dim, eps=self.eps)

    def extra_repr(self) -> str:
        """Show ``p``, ``dim`` and ``eps``."""
        return f"p={self.p}, dim={self.dim}, eps={self.eps}"


__all__ = ("MatMul", "Mul", "Normalize")
