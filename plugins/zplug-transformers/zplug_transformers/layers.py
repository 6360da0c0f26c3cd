"""The plugin's own modules: the rotary position embedding and the attention core as calls rules can sit on.

Llama, Qwen and Gemma rotate each query and key vector by angles that depend on its position only:
``x * cos + rotate_half(x) * sin``. The angles are constants of the input (they come from the
position ids), so the rotation is a linear map of ``x``. Written as functions, its products
with ``cos`` and ``sin`` and the negation in ``rotate_half`` scale relevance the way a gradient
does; as a module, it is a ``gate`` layer: the ``product`` rule hands ``x``, its only operand that
carries relevance, ``x * J^T (R / stab(y))``, which is LRP-epsilon on the linear map.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from zplug.layers import MatMul


class Rotate(torch.nn.Module):
    """``x * cos + rotate_half(x) * sin``: Hugging Face's rotary position embedding for one tensor.

    ``rotate_half`` swaps the two halves of the last dimension and negates the new first half,
    as in ``transformers.models.llama.modeling_llama.rotate_half``; the arithmetic is the same, so
    the output is bit for bit Hugging Face's.
    """

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Return the rotated ``x`` (``cos`` and ``sin`` broadcast against it)."""
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return (x * cos) + (rotated * sin)


class Attention(torch.nn.Module):
    """``softmax(scale q k^T + masks) v`` as Hugging Face's attention computes it, through three children.

    ``scores`` (:class:`zplug.layers.MatMul` holding the scale), ``softmax`` and ``context``
    (``MatMul`` whose value operand is ``v``) are where the rules sit; the module as a whole is an
    ``attention`` layer, on which ``recompute`` keeps only ``q``, ``k`` and ``v`` for the backward pass.
    The call's arguments are those of :func:`attend`; it returns the context and the weights.

    Parameters
    ----------
    scale : float or None
        The scores' scale (``None``: set per call, as GPT-2 does).
    groups : int
        Query heads per key/value head (grouped-query attention).
    """

    def __init__(self, scale: float | None = None, groups: int = 1) -> None:
        super().__init__()
        self.scores = MatMul(scale=scale)
        self.softmax = torch.nn.Softmax(dim=-1)
        self.context = MatMul(value=1)
        self.num_key_value_groups = groups

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, need_weights: bool = True, **options: object
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Return the context and the attention weights, or the context alone without ``need_weights``.

        ``options`` are those of :func:`attend`. Without the weights, without autograd recording (the
        forward pass under ``recompute``, which runs the children again in the backward pass), without
        dropout and in float32 or float64, torch's fused attention computes the context (equal up to
        round-off; it keeps no ``length x length`` tensor).
        """
        if not need_weights and not torch.is_grad_enabled() and _fusable(q, options):
            return _fused(self, q, k, v, options.get("blocked"), options.get("additive"))
        out, weights = attend(self, q, k, v, **options)
        return (out, weights) if need_weights else out

    def fused(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, need_weights: bool = True, **options: object
    ) -> torch.Tensor | None:
        """The context from torch's fused kernel, or None where it cannot compute the call (``fused_attention``).

        None when the weights are asked for, with dropout, or outside float32/float64.
        """
        if need_weights or not _fusable(q, options):
            return None
        return _fused(self, q, k, v, options.get("blocked"), options.get("additive"))

    def extra_repr(self) -> str:
        """Show the key/value groups."""
        return f"groups={self.num_key_value_groups}"


def _fusable(q: torch.Tensor, options: dict) -> bool:
    """Whether :func:`_fused` computes what :func:`attend` computes with these options."""
    return (
        q.dtype in (torch.float32, torch.float64)
        and options.get("dropout") is None
        and (options.get("blocked") is None or bool(options.get("zero_blocked_rows")))
    )


def _fused(
    module: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    blocked: torch.Tensor | None, additive: torch.Tensor | None,
) -> torch.Tensor:
    """The context of :func:`attend` from ``torch.nn.functional.scaled_dot_product_attention``.

    Blocked positions become ``-inf`` (a query with nothing to attend to gets zeros, as ``attend`` gives
    it with ``zero_blocked_rows``); additive masks are added as they are.
    """
    groups = module.num_key_value_groups
    k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
    mask = None
    if additive is not None:
        mask = additive[:, :, :, : k.shape[-2]]
        if blocked is not None:
            mask = mask.masked_fill(blocked, float("-inf"))
    elif blocked is not None:
        mask = ~blocked
    scale = 1.0 if module.scores.scale is None else module.scores.scale
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Grouped-query attention: repeat each key/value head ``groups`` times (copies: relevance adds up)."""
    if groups == 1:
        return x
    batch, heads, length, size = x.shape
    return x[:, :, None].expand(batch, heads, groups, length, size).reshape(batch, heads * groups, length, size)


def attend(
    module: torch.nn.Module,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    blocked: torch.Tensor | None = None,
    additive: torch.Tensor | None = None,
    upcast: bool = False,
    dropout: Callable[[torch.Tensor], torch.Tensor] | None = None,
    zero_blocked_rows: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(scores + mask) @ v`` through ``module.scores``, ``module.softmax`` and ``module.context``.

    Parameters
    ----------
    module : torch.nn.Module
        The :class:`Attention` module (children ``scores``, ``softmax``, ``context``; attribute
        ``num_key_value_groups`` for grouped-query attention).
    q, k, v : torch.Tensor
        Shaped ``(batch, heads, length, head size)``.
    blocked : bool tensor or None
        True where a query may not attend to a key: the score becomes the dtype's smallest number.
    additive : float tensor or None
        Added to the scores after ``blocked`` (Hugging Face's 4-d masks; a constant of the input).
    upcast : bool
        Compute the softmax in float32 and cast back (Llama, Qwen, Gemma). Half-precision inputs are
        computed in float32 throughout (products, masks, softmax) and the results cast back.
    dropout : callable or None
        Applied to the attention weights (Hugging Face's dropout; the identity in evaluation mode).
    zero_blocked_rows : bool
        Give queries that may attend to nothing zero weights (``scaled_dot_product_attention``'s
        convention) instead of uniform ones.

    Returns
    -------
    tuple of torch.Tensor
        The context ``(batch, heads, length, head size)`` and the attention weights.
    """
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):
        # As scaled_dot_product_attention does on CPUs: products, masks and softmax in float32 (exact masks, and
        # the rules on them are computed in float32 too); the casts are linear and keep relevance as it is.
        q, k, v = q.float(), k.float(), v.float()
        additive = None if additive is None else additive.float()
    groups = getattr(module, "num_key_value_groups", 1)
    k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
    scores = module.scores(q, k.transpose(-2, -1))
    # Masks in place: one (heads x length x length) tensor per layer fewer is kept for the backward pass. The
    # rule on ``scores`` sees that its output changed and recomputes it, where relevance arrives there at all.
    if blocked is not None:
        scores = scores.masked_fill_(blocked, torch.finfo(scores.dtype).min)
    if additive is not None:
        scores = scores.add_(additive[:, :, :, : k.shape[-2]])
    weights = module.softmax(scores.float()).to(q.dtype) if upcast else module.softmax(scores)  # q: float32 or 64
    if zero_blocked_rows and blocked is not None:
        empty = blocked.all(dim=-1, keepdim=True)
        if bool(empty.any()):
            weights = weights.masked_fill(empty, 0.0)
    if dropout is not None:
        weights = dropout(weights)
    return module.context(weights, v).to(dtype), weights.to(dtype)


__all__ = ("Attention", "Rotate", "attend")
