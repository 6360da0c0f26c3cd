"""``recompute``: the rules inside a module, with the module's forward run again in the backward pass.

A module whose children all have rules (attention: scores, softmax, context) needs no rule of its
own; its relevance is what its children's rules make of it. Its large intermediate tensors (the
attention scores and weights, length x length per head) are kept for the backward pass, though,
once per layer. ``recompute`` trades them for a second forward pass of the module: during the
forward pass the module runs without recording anything inside it (only its inputs are kept), and
in the backward pass its forward runs again, with its children's rules attached, one layer at a
time. The relevance is the same as without the rule; only memory and time change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import attrs

from zplug._lazy import lazy_module
from zplug.rules.base import Rule

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")
_ops = lazy_module("zplug.engine.ops")


@attrs.frozen(kw_only=True)
class Recompute(Rule):
    """The relevance of the rules inside the module, from its forward run again in the backward pass.

    The module's inputs are kept, nothing inside it; in the backward pass its forward runs again
    with the rules of the modules inside it applying, and their relevance of the module's inputs is
    returned. Operations inside the module are covered by those rules (the coverage analysis looks
    inside it). While the ledger watches, the module runs as it is, so that the ledger sees each
    rule inside it.
    """

    name = "recompute"
    summary = "the rules inside the module, its forward run again in the backward pass (saves memory)"
    recomputes = True

    def backward(self, call, grad_outputs):
        """Return the relevance of each input: the inner rules' relevance on a recomputed forward."""
        create_graph = torch.is_grad_enabled()
        wanted = [i for i, x in enumerate(call.inputs) if x.requires_grad]
        with torch.enable_grad(), _ops.rules_applying(), _same_random_numbers(call.key.rng_state):
            # Under create_graph the inputs themselves are the leaves, so the relevance stays differentiable
            # with respect to what lies below the module; otherwise fresh leaves keep the graph local.
            leaves = tuple(
                (x if create_graph else x.detach().requires_grad_()) if i in wanted else x.detach()
                for i, x in enumerate(call.inputs)
            )
            args, kwargs = call.rebuild(leaves)
            output = call.binding.original_forward(*args, **kwargs)
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        pairs = [
            (o, g) for o, g in zip(outputs, grad_outputs)
            if isinstance(o, torch.Tensor) and o.requires_grad and g is not None
        ]  # fmt: skip
        relevance: list = [None] * len(leaves)
        if pairs and wanted:
            grads = torch.autograd.grad(
                [o for o, _ in pairs], [leaves[i] for i in wanted], [g for _, g in pairs],
                allow_unused=True, create_graph=create_graph,
            )  # fmt: skip
            for i, grad in zip(wanted, grads):
                relevance[i] = grad
        return tuple(relevance)


@contextmanager
def _same_random_numbers(state: tuple | None) -> Iterator[None]:
    """Replay the random number generators from ``state`` (the forward pass's), restoring them afterwards."""
    if state is None:
        yield
        return
    cpu, gpus = state
    with torch.random.fork_rng(devices=[d for d, _ in gpus]):
        torch.set_rng_state(cpu)
        for device, gpu in gpus:
            torch.cuda.set_rng_state(gpu, device)
        yield


__all__ = ("Recompute",)
