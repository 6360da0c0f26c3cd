"""``fused_attention``: AttnLRP's rules for the whole of attention, from the gradient of torch's fused attention.

Inside ``softmax(scale q k^T + mask) v`` with the uniform product rule (no stabiliser inside) and the
softmax rule, the relevance of ``q``, ``k`` and ``v`` is each operand times a fixed share of the
gradient of the attention output: with ``g = R / stab(out)``, ``R_q = q * J_q^T g / 4``,
``R_k = k * J_k^T g / 4`` and ``R_v = v * J_v^T g / 2`` (each product splits its relevance in halves;
the softmax rule is the softmax's own vector-Jacobian product once the relevance is divided by the
weights). That gradient is what torch's fused attention kernel computes, without ``length x length``
tensors per head; it is how LXT computes AttnLRP. ``to="value"`` gives everything to ``v``
(``R_v = v * J_v^T g``; CP-LRP), which needs no stabiliser inside either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from zplug._lazy import lazy_module
from zplug.rules.base import non_negative_or_callable, parameter
from zplug.rules.recompute import Recompute
from zplug.rules.transformer import _carries, _check_to, product_weights

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")
_stabilize = lazy_module("zplug.engine.stabilize")


def attention_shares(q, k, v, to: str) -> tuple[float, float, float]:
    """The share of ``operand * J^T g`` that each of ``q``, ``k``, ``v`` gets.

    The weights of the product rule on ``attn @ v`` (value ``v``) times those on ``q @ k^T`` (no value
    operand) for ``q`` and ``k``: a quarter, a quarter and a half when all three carry relevance and
    ``to="all"``; an operand that alone carries relevance in its product gets all of that product's.
    """
    cq, ck, cv = _carries(q), _carries(k), _carries(v)
    context = product_weights([i for i, c in enumerate((cq or ck, cv)) if c], 1, to)  # (attn, v), value v
    scores = product_weights([i for i, c in enumerate((cq, ck)) if c], None, to)  # (q, k^T), no value operand
    return (context.get(0, 0.0) * scores.get(0, 0.0), context.get(0, 0.0) * scores.get(1, 0.0), context.get(1, 0.0))


@attrs.frozen(kw_only=True)
class FusedAttention(Recompute):
    """Attention as one operation: AttnLRP's (or CP-LRP's) relevance from the gradient of the fused kernel.

    For an attention module that can compute its call with torch's fused kernel (its ``fused``
    method: :class:`zplug.layers.ScaledDotProductAttention`, the transformers plugin's ``Attention``),
    ``R_q = q * J_q^T g / 4``, ``R_k = k * J_k^T g / 4``, ``R_v = v * J_v^T g / 2`` with
    ``g = R / stab(out)`` (``to="all"``), or ``R_v = v * J_v^T g`` alone (``to="value"``). This is the
    uniform product rule on ``q @ k^T`` and ``attn @ v`` with no stabiliser inside attention and the
    softmax rule in between (``to="value"``: exactly the inner rules). The forward pass runs the fused
    kernel and keeps what its backward needs (``q``, ``k``, ``v``, the output and one log-sum-exp per row,
    no ``length x length`` tensor); the backward pass differentiates it. Calls the kernel cannot compute
    (attention weights asked for, dropout, half precision), and every call while the ledger watches, get
    ``recompute``: the rules of the modules inside, which differ from the fused computation only by their
    stabilisers.
    """

    name = "fused_attention"
    summary = "attention as a whole: AttnLRP's inner rules (no inner stabiliser) from the fused kernel's gradient"
    epsilon: float = parameter(
        1e-6, doc="stabiliser of the division by the attention output", kind="number >= 0",
        check=non_negative_or_callable,
    )
    to: str = parameter(
        "all",
        doc="'all': q and k a quarter, v half of their gradient share (AttnLRP); 'value': all to v (CP-LRP)",
        kind="'all' or 'value'",
        check=_check_to,
    )

    def receivers(self, module, inputs):
        """``q``, ``k``, ``v`` as far as they get a share (``to="value"``: ``v`` only); masks get none."""
        if len(inputs) < 3 or getattr(module, "fused", None) is None:
            return None
        shares = attention_shares(*inputs[:3], self.to)
        return tuple(i for i in range(3) if shares[i])

    def compute_forward(self, module, forward, args, kwargs, state):
        """The fused kernel's output where the module offers it (its graph kept for the backward pass)."""
        fused = getattr(module, "fused", None)
        output = None
        if fused is not None and len(args) >= 3 and all(isinstance(t, torch.Tensor) for t in args[:3]):
            shares = attention_shares(*args[:3], self.to)
            # The kernel's own graph: its backward needs its output and log-sum-exp, which a second forward in
            # the backward pass would otherwise compute again.
            with torch.enable_grad():
                leaves = [t.detach().requires_grad_(bool(shares[i])) for i, t in enumerate(args[:3])]
                output = fused(*leaves, *args[3:], **kwargs)
            if output is not None:
                state["graph"] = (leaves, output)
                output = output.detach()
        return forward(*args, **kwargs) if output is None else output

    def backward(self, call, grad_outputs):
        """Return the relevance of ``q``, ``k`` and ``v`` (see the class docstring)."""
        return self._propagate(call, grad_outputs, gradient=False)

    def gradient(self, call, grad_outputs):
        """``share * J^T (G out / stab(out))`` for ``q``, ``k``, ``v``: their relevance divided by them."""
        return self._propagate(call, grad_outputs, gradient=True)

    def _propagate(self, call, grad_outputs, *, gradient: bool):
        fused = getattr(call.module, "fused", None)
        if fused is None or len(call.inputs) < 3 or len(grad_outputs) != 1:
            return Recompute.backward(self, call, grad_outputs)  # the inner rules (in the current form)
        q, k, v = call.inputs[:3]
        shares = attention_shares(q, k, v, self.to)
        wanted = [i for i in range(3) if shares[i]]
        relevance: list = [None] * len(call.inputs)
        if not wanted:
            return tuple(relevance)
        create_graph = torch.is_grad_enabled()
        graph = call.state.pop("graph", None)  # used once: a second backward pass runs the kernel again
        with torch.enable_grad():
            if graph is not None and not create_graph:
                leaves, out = graph
            else:
                leaves = [x if (create_graph and x.requires_grad) else x.detach().requires_grad_(i in wanted)
                          for i, x in enumerate((q, k, v))]
                args, kwargs = call.rebuild((*leaves, *call.inputs[3:]))
                out = fused(*args, **kwargs)
            if out is None:  # a call the kernel cannot compute: its forward pass ran the module's own forward
                return Recompute.backward(self, call, grad_outputs)
            # The forward pass's output (it made the relevance above), or the same kernel's again: differentiable.
            detached = out if create_graph else out.detach()
            if gradient:
                scaled = _stabilize.gradient_scaled(grad_outputs[0], self.epsilon, detached)
            else:
                scaled = _stabilize.divide_stabilized(grad_outputs[0], self.epsilon, detached)
            grads = torch.autograd.grad(out, [leaves[i] for i in wanted], scaled, create_graph=create_graph)
        for i, grad in zip(wanted, grads):
            if gradient:
                share = grad
            else:
                share = grad * call.inputs[i] if create_graph else grad.mul_(call.inputs[i])
            relevance[i] = share if shares[i] == 1 else share * shares[i]
        return tuple(relevance)


__all__ = ("FusedAttention",)
