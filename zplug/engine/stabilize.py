"""Stabilised division, with Zennit's sign convention (0 counts as positive)."""

from __future__ import annotations

import math
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


_EXACT_DTYPES = (torch.float32, torch.float64)


def divide_stabilized(relevance: torch.Tensor, stabilizer: StabilizerLike, z: torch.Tensor) -> torch.Tensor:
    """Return ``relevance / stab(z)``; without autograd recording, in one buffer instead of three."""
    if torch.is_grad_enabled() or not isinstance(stabilizer, Real) or relevance.shape != z.shape:
        return relevance / apply_stabilizer(stabilizer, z)
    epsilon = float(stabilizer)
    if z.dtype in _EXACT_DTYPES and relevance.dtype == z.dtype and z.device.type == "cpu":
        # z + eps * sign(z) in two passes: for non-zero z, eps * (+-1) is exact, so this is bit for bit
        # Zennit's sum. Zeros (sign 0, also -0.0) leave a zero denominator, and every division by zero
        # gives inf or NaN: a finite sum of the quotient proves there was none. (CPU only: on a GPU the
        # check would wait for the device at every layer, and element-wise passes are cheap there.)
        denominator = torch.sign(z)
        torch.add(z, denominator, alpha=epsilon, out=denominator)
        quotient = torch.div(relevance, denominator, out=denominator)
        if math.isfinite(quotient.sum().item()):
            return quotient
    denominator = _signed_epsilon(z, epsilon).add_(z)
    return torch.div(relevance, denominator, out=denominator)


def divide_where_nonzero(numerator: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``numerator / x``, with 0 where ``x`` is 0 (for quotients whose numerator is 0 there as well).

    Without a zero in ``x`` the quotient is finite (unless the numerator is not): on a CPU without autograd
    recording a finite sum proves there was none, in one read instead of a comparison and two masked copies
    (on a GPU the check would wait for the device).
    """
    if not torch.is_grad_enabled() and x.device.type == "cpu" and numerator.dtype == x.dtype:
        quotient = torch.div(numerator, x)
        if math.isfinite(quotient.sum().item()):
            return quotient
    zero = x == 0
    return (numerator / x.masked_fill(zero, 1.0)).masked_fill_(zero, 0.0)


def gradient_scaled(
    grad: torch.Tensor, stabilizer: StabilizerLike, out: torch.Tensor, stabilized: torch.Tensor | None = None
) -> torch.Tensor:
    """``grad * out / stab(stabilized)``: in gradient form, what ``R / stab(z)`` is in relevance form.

    ``out`` is the layer's output (its relevance is ``out * grad``), ``stabilized`` the value the rule
    divides by (``out`` unless parameters are zeroed). With a zero stabiliser and ``stabilized`` the
    output itself the quotient is ``grad`` (also where the output is 0, the limit of the division).
    """
    if stabilized is None or stabilized is out:
        if isinstance(stabilizer, Real) and stabilizer == 0:
            return grad
        stabilized = out
    return divide_stabilized(grad * out, stabilizer, stabilized)


__all__ = (
    "StabilizerLike", "apply_stabilizer", "divide_stabilized", "divide_where_nonzero", "gradient_scaled", "stabilize",
)
