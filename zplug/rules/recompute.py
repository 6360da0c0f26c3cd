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

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import attrs

from zplug._lazy import lazy_module
from zplug.parts import non_negative_int
from zplug.rules.base import Rule, parameter

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
    samples: int = parameter(
        0,
        doc="samples per recomputation: 0 recomputes the whole batch at once, n > 0 groups of n samples (for "
        "modules that treat samples independently, such as attention: bounds the memory of the recomputation)",
        kind="integer >= 0",
        check=non_negative_int,
    )

    def gradient_form(self, module):
        """:meth:`gradient`: the inner rules, in gradient form."""
        return "rule"

    def gradient(self, call, grad_outputs):
        """The inner rules' gradient form on a recomputed forward (they are attached in gradient form)."""
        return self.backward(call, grad_outputs)

    def backward(self, call, grad_outputs):
        """Return the relevance of each input: the inner rules' relevance on a recomputed forward."""
        wanted = [i for i, x in enumerate(call.inputs) if x.requires_grad]
        relevance: list = [None] * len(call.inputs)
        if not wanted:
            return tuple(relevance)
        groups, per_sample = _groups(call, grad_outputs, self.samples)
        shares: dict[int, list] = {i: [] for i in wanted}
        with _same_random_numbers(call.key.rng_state):
            for group in groups:
                found = _recomputed(call, grad_outputs, wanted, group, per_sample)
                for i in wanted:
                    shares[i].append(found.get(i))
        for i in wanted:
            if all(share is None for share in shares[i]):
                continue
            x = call.inputs[i]
            if len(groups) > 1 and per_sample(x):  # one slice of the batch per group
                relevance[i] = torch.cat([
                    torch.zeros_like(x[group]) if share is None else share for group, share in zip(groups, shares[i])
                ])  # fmt: skip
            else:  # the whole tensor in every group (broadcast over the batch): its shares add up
                present = [share for share in shares[i] if share is not None]
                relevance[i] = present[0] if len(present) == 1 else torch.stack(present).sum(dim=0)
        return tuple(relevance)


def _groups(call, grad_outputs, samples: int) -> tuple[list[slice | None], Callable[[object], bool]]:
    """The batch slices to recompute one after another (``[None]``: all at once), and which values are per sample.

    A tensor argument is per sample if it has the outputs' number of dimensions and their batch size;
    with fewer dimensions, or size 1 there, it broadcasts over the batch and is passed whole. Groups are
    made only where every output has the same batch size and number of dimensions, and not in training
    mode (a group would draw other random numbers than the whole batch did).
    """
    outputs = [g for g in grad_outputs if g is not None]
    ndim = outputs[0].ndim if outputs else 0
    batch = outputs[0].shape[0] if ndim else 0

    def per_sample(value: object) -> bool:
        return isinstance(value, torch.Tensor) and ndim > 0 and value.ndim == ndim and value.shape[0] == batch

    if samples <= 0 or batch <= samples or call.module.training or not all(per_sample(g) for g in outputs):
        return [None], per_sample
    return [slice(start, start + samples) for start in range(0, batch, samples)], per_sample


def _recomputed(
    call, grad_outputs, wanted: list[int], group: slice | None, per_sample: Callable[[object], bool]
) -> dict[int, torch.Tensor | None]:
    """The relevance of the wanted inputs from one recomputation of the forward (on ``group`` of the batch)."""
    create_graph = torch.is_grad_enabled()

    def part(value):
        return value[group] if group is not None and per_sample(value) else value

    with torch.enable_grad(), _ops.rules_applying():
        # Under create_graph the inputs themselves are the leaves, so the relevance stays differentiable
        # with respect to what lies below the module; otherwise fresh leaves keep the graph local.
        leaves = []
        for i, x in enumerate(call.inputs):
            x = part(x)
            leaves.append((x if create_graph else x.detach().requires_grad_()) if i in wanted else x.detach())
        index = {id(x): i for i, x in enumerate(call.inputs)}
        args = tuple(leaves[index[id(a)]] if id(a) in index else part(a) for a in call.args)
        kwargs = {k: leaves[index[id(v)]] if id(v) in index else part(v) for k, v in call.kwargs.items()}
        output = call.binding.original_forward(*args, **kwargs)
    outputs = output if isinstance(output, (tuple, list)) else (output,)
    pairs = [
        (o, part(g)) for o, g in zip(outputs, grad_outputs)
        if isinstance(o, torch.Tensor) and o.requires_grad and g is not None
    ]  # fmt: skip
    if not pairs:
        return {}
    grads = torch.autograd.grad(
        [o for o, _ in pairs], [leaves[i] for i in wanted], [g for _, g in pairs],
        allow_unused=True, create_graph=create_graph,
    )  # fmt: skip
    return dict(zip(wanted, grads))


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
