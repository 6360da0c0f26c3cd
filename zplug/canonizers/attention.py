"""Canonizers for transformers: attention and other functional operations as modules.

* ``multihead_attention`` rewrites every ``torch.nn.MultiheadAttention`` as explicit query,
  key and value projections (``torch.nn.Linear`` modules whose parameters share storage with
  ``in_proj_weight``/``in_proj_bias``), a :class:`~zplug.layers.ScaledDotProductAttention`
  (scores, softmax, context as modules) and ``out_proj``. torch computes attention inside
  ``F.multi_head_attention_forward`` from the weights alone, so without the rewrite no rule
  reaches any of it.
* ``functional_ops`` traces each module's own forward with ``torch.fx`` (its children are
  leaves) and routes ``torch.matmul``/``@``/``bmm``, softmax, ``F.scaled_dot_product_attention``,
  element-wise products and divisions by a number, and additions of two tensors through
  :mod:`zplug.layers` modules registered as children of that module.

Both are :class:`~zplug.canonizers.rewrite.ForwardRewrite` canonizers: on its first call each
rewritten module is compared with its original forward; a difference undoes the rewrite and
raises :class:`~zplug.canonizers.base.CanonizerError`. Linear operations whose plain gradient
is exact for relevance (``reshape``, ``permute``, ``transpose``, indexing, ``torch.cat``,
``torch.roll``, ``masked_fill``) are left as they are. Nothing in torch or any library is patched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import attrs

from zplug.canonizers.rewrite import ForwardRewrite, Rewrite

if TYPE_CHECKING:
    import torch


@attrs.frozen(kw_only=True)
class MultiheadAttentionCanonizer(ForwardRewrite):
    """Rewrite every ``torch.nn.MultiheadAttention`` with explicit projections and attention modules.

    Children added to each attention module for the duration: ``q_proj``, ``k_proj``,
    ``v_proj`` (``torch.nn.Linear``, parameters sharing storage with the module's own) and
    ``attention`` (:class:`~zplug.layers.ScaledDotProductAttention`: ``scores``, ``bias``,
    ``softmax``, ``context``); ``out_proj`` is called as a module. The rewritten forward takes
    the same arguments and returns the same output and weights. Modules with ``add_bias_kv``
    or ``add_zero_attn`` are refused (a :class:`CanonizerError`).
    """

    name: ClassVar[str] = "multihead_attention"
    summary: ClassVar[str] = "torch.nn.MultiheadAttention as q/k/v projections, MatMul, Softmax, MatMul, out_proj"

    def rewrites(self, model: torch.nn.Module) -> list[Rewrite]:
        """One rewrite per ``MultiheadAttention`` (exact class forward)."""
        from zplug.canonizers._attention_impl import multihead_attention_rewrites

        return multihead_attention_rewrites(model, self.name)


@attrs.frozen(kw_only=True)
class FunctionalOps(ForwardRewrite):
    """Route functional operations through modules, module by module (``torch.fx``).

    Each module whose class is not torch's or zplug's own, and whose forward ``torch.fx`` can
    trace with all children as leaves, gets a rewritten forward in which

    * ``a + b`` (two tensors) calls a ``Sum`` child (``sum``);
    * ``torch.matmul``/``@``/``bmm`` of two tensors calls a :class:`~zplug.layers.MatMul`
      (``matmul``; ``value=1`` if its first operand comes from a softmax, i.e. ``attn @ v``);
    * ``F.softmax``/``torch.softmax``/``x.softmax`` calls ``torch.nn.Softmax`` (``softmax``);
    * ``F.scaled_dot_product_attention`` calls a :class:`~zplug.layers.ScaledDotProductAttention`
      (``attention``);
    * ``a * b`` and ``a / number`` call a :class:`~zplug.layers.Mul` (``mul``; for two tensors
      of which one comes from an activation, the other is the value);
    * functional pooling and means call pooling modules (``pool``, ``mean``), as in
      ``functional_pooling``.

    It does everything ``residual_sum`` and ``functional_pooling`` do, so it covers them.
    """

    name: ClassVar[str] = "functional_ops"
    summary: ClassVar[str] = "route matmul, softmax, scaled_dot_product_attention, products and sums through modules"
    covers: ClassVar[tuple[str, ...]] = ("residual_sum", "functional_pooling")

    def rewrites(self, model: torch.nn.Module) -> list[Rewrite]:
        """One rewrite per module with functional operations to route."""
        from zplug.canonizers._attention_impl import functional_rewrites

        return functional_rewrites(model)[0]

    def describe(self, model: torch.nn.Module) -> list[str]:
        """One line per rewritten module, and one per module that could not be traced."""
        from zplug.canonizers._attention_impl import functional_rewrites

        plan, untraceable = functional_rewrites(model)
        return [f"{r.name or '<model>'} ({type(r.module).__name__}): {r.what}" for r in plan] + untraceable


def has_attention(model: torch.nn.Module) -> list[str]:
    """Names of modules whose own forward calls matmul, softmax or ``scaled_dot_product_attention``."""
    from zplug.canonizers._attention_impl import has_attention as found

    return found(model)


__all__ = ("FunctionalOps", "MultiheadAttentionCanonizer", "has_attention")
