"""Stabilised division, with Zennit's sign convention (0 counts as positive)."""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real

import torch

StabilizerLike = float | Callable[[torch.Tensor], torch.Tensor]


def stabilize(
    z: torch.Tensor,
    epsilon: float = 1e-6,
    *,
    clip: bool = False,
    norm_scale: bool = False,
    dim: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Move ``z`` away from zero so that it can divide.

    Parameters
    ----------
    z : torch.Tensor
        The denominator.
    epsilon : float
        Added with the sign of each entry (``+epsilon`` for zeros).
    clip : bool
        Instead of adding, clip ``|z|`` from below at ``epsilon`` (keeping the sign).
    norm_scale : bool
        Scale ``epsilon`` by the root mean square of ``z`` over ``dim``.
    dim : tuple of int or None
        Dimensions for ``norm_scale``; all but the first by default.

    Returns
    -------
    torch.Tensor
        The stabilised denominator (a new tensor).
    """
    sign = (z == 0).to(z) + z.sign()
    if norm_scale:
        dims = tuple(range(1, z.ndim)) if dim is None else dim
        epsilon = epsilon * (z**2).mean(dim=dims, keepdim=True) ** 0.5
    if clip:
        return sign * z.abs().clip(min=epsilon)
    return z + sign * epsilon


def apply_stabilizer(stabilizer: StabilizerLike, z: torch.Tensor) -> torch.Tensor:
    """Stabilise ``z`` with a float (``stabilize(z, value)``) or a callable ``f(z) -> z'``."""
    if isinstance(stabilizer, Real):
        # Same numbers as ``stabilize(z, eps)`` (sign(0) = +1) in fewer element-wise passes.
        return z + _signed_epsilon(z.detach(), float(stabilizer))
    return stabilizer(z)


def _signed_epsilon(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``epsilon * sign(z)`` with sign(0) = +1, in a new buffer (faster than ``torch.where`` on CPU)."""
    signed = torch.sign(z)
    signed.masked_fill_(signed == 0, 1.0)
    return signed.mul_(epsilon)


def _stabilized(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with sign(0) = +1, in a new buffer, without recording a graph.

    Without zeros in ``z`` this is ``copysign(|z| + epsilon, z)``: rounding is symmetric, so
    ``-(|z| + eps)`` is bit for bit ``z - eps``, in three passes instead of five. A zero could
    be ``-0.0``, whose sign bit would pick ``-eps``; those tensors (and reduced-precision ones,
    where the scalar is rounded differently) take the general way.
    """
    magnitude = torch.abs(z)
    if z.dtype in _EXACT_DTYPES and magnitude.numel() and magnitude.min().item() > 0:  # NaN: False
        return magnitude.add_(epsilon).copysign_(z)
    return _signed_epsilon(z, epsilon).add_(z)


_EXACT_DTYPES = (torch.float32, torch.float64)


def divide_stabilized(relevance: torch.Tensor, stabilizer: StabilizerLike, z: torch.Tensor) -> torch.Tensor:
    """Return ``relevance / stab(z)``; without autograd recording, in one buffer instead of three."""
    if torch.is_grad_enabled() or not isinstance(stabilizer, Real) or relevance.shape != z.shape:
        return relevance / apply_stabilizer(stabilizer, z)
    denominator = _stabilized(z, float(stabilizer))
    return torch.div(relevance, denominator, out=denominator)


__all__ = ("StabilizerLike", "apply_stabilizer", "divide_stabilized", "stabilize")
