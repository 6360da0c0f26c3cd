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

import math

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


class ScaledDotProductAttention(torch.nn.Module):
    """``F.scaled_dot_product_attention`` written with modules: ``softmax(scale q k^T + mask) v``.

    Children: ``scores`` (:class:`MatMul` with the scale), ``bias`` (a ``Sum`` for a finite
    additive mask, such as a relative-position bias), ``softmax`` (``torch.nn.Softmax(-1)``) and
    ``context`` (:class:`MatMul` with ``value=1``). Boolean masks, ``-inf`` entries and
    ``is_causal`` become ``masked_fill(-inf)``, which passes no relevance to masked positions.
    The arguments are those of :func:`torch.nn.functional.scaled_dot_product_attention`.
    """

    def __init__(self) -> None:
        super().__init__()
        from zplug.layers import Sum

        self.scores = MatMul()
        self.bias = Sum()
        self.softmax = torch.nn.Softmax(dim=-1)
        self.context = MatMul(value=1)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        """Return the attention output (as the function does)."""
        return self.attend(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)[0]

    def fused(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor | None:
        """The output of this call from torch's fused kernel, or None with dropout (``fused_attention``'s use)."""
        if dropout_p > 0.0:
            return None
        if is_causal and attn_mask is not None:  # the function takes one or the other: the causal part as a mask
            length, source = query.shape[-2], key.shape[-2]
            causal = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
            if attn_mask.dtype == torch.bool:
                attn_mask = attn_mask & causal
            else:
                attn_mask = attn_mask.masked_fill(~causal, float("-inf"))
            is_causal = False
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
        )

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the attention output and the attention weights (after dropout)."""
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            repeats = query.shape[-3] // key.shape[-3]
            key = key.repeat_interleave(repeats, dim=-3)
            value = value.repeat_interleave(repeats, dim=-3)
        # The scale is a property of the call (it depends on the head size): the scores module
        # holds it so that its rule sees the product it computed.
        self.scores.scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
        scores = self.scores(query, key.transpose(-2, -1))
        masked = None
        if is_causal:
            length, source = query.shape[-2], key.shape[-2]
            masked = ~torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                blocked = ~attn_mask
            else:
                blocked = attn_mask == float("-inf")
                finite = attn_mask.masked_fill(blocked, 0.0)
                if bool(finite.ne(0).any()):
                    scores = self.bias(scores, finite.to(scores.dtype))
            masked = blocked if masked is None else masked | blocked
        if masked is not None:
            scores = scores.masked_fill(masked, float("-inf"))
        weights = self.softmax(scores)
        if masked is not None:  # queries that may attend to nothing get zero weights, as the function gives them
            empty = masked.all(dim=-1, keepdim=True)
            if bool(empty.any()):
                weights = weights.masked_fill(empty, 0.0)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p, training=True)
        return self.context(weights, value), weights


__all__ = ("MatMul", "Mul", "Normalize", "ScaledDotProductAttention")
