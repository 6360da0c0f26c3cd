"""The hook machinery: a rule's relevance replaces a module's gradient.

While rules are attached, a module's ``forward`` is replaced by a :class:`Binding`. When
gradients are needed, the binding runs the original forward inside a custom
``torch.autograd.Function`` whose backward asks the rule for the input relevance. Each
call records its own inputs, so a module called twice gets two independent relevance
computations, and every tensor argument (positional or keyword) gets its own relevance.

Observers (:data:`Observer`) see every rule computation; :attr:`LayerCall.key` is the call's
autograd node, and :func:`binding_of` recognises such nodes when an observer walks the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from zplug.engine.identity import is_identity
from zplug.engine.ops import GenericOp, LayerOp, inside_rule, op_for, params_of, rule_computation
from zplug.errors import RelevanceError

if TYPE_CHECKING:
    from zplug.rules.base import Rule

#: An observer is called after each rule computation as ``observer(binding, call, grad_outputs, relevance)``:
#: the :class:`Binding` (module name and rule), the :class:`LayerCall` (``call.key`` identifies the call),
#: the relevance of each output and the relevance the rule returned for each input. Attaching one turns
#: the pass-through shortcuts off, so that it sees every call (see :attr:`Binding.observers`).
Observer = Callable[["Binding", "LayerCall", tuple, tuple], None]


class _ArgSpec:
    """Where the tensor inputs sit in a call's ``args``/``kwargs``."""

    __slots__ = ("args", "kwargs", "shared", "slots")

    def __init__(self, args: tuple, kwargs: dict) -> None:
        self.args = args
        self.kwargs = kwargs
        #: True for the shared spec of calls with tensors only (see :meth:`positional`).
        self.shared = False
        self.slots: list[int | str] = [i for i, a in enumerate(args) if _is_input(a)]
        self.slots += [k for k, v in kwargs.items() if _is_input(v)]

    @staticmethod
    def positional(count: int) -> _ArgSpec:
        """The spec of a call with ``count`` floating-point tensors as its only arguments (shared)."""
        spec = _POSITIONAL.get(count)
        if spec is None:
            spec = _POSITIONAL[count] = _ArgSpec((None,) * count, {})
            spec.slots = list(range(count))
            spec.shared = True
        return spec

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.args[s] if isinstance(s, int) else self.kwargs[s] for s in self.slots)

    def rebuild(self, tensors: tuple[torch.Tensor, ...]) -> tuple[tuple, dict]:
        if not self.kwargs and len(self.slots) == len(self.args):  # the common case: only tensor arguments
            return tuple(tensors), {}
        args, kwargs = list(self.args), dict(self.kwargs)
        for slot, tensor in zip(self.slots, tensors):
            if isinstance(slot, int):
                args[slot] = tensor
            else:
                kwargs[slot] = tensor
        return tuple(args), kwargs


_POSITIONAL: dict[int, _ArgSpec] = {}


def _is_input(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


class LayerCall:
    """Everything a rule may use about one call of its module, during the backward pass.

    Attributes
    ----------
    key : torch.autograd.graph.Node
        What identifies this call: its node in the autograd graph (the ``grad_fn`` of its outputs),
        the object the forward pass made for it. An observer that walks the graph finds the same
        object there (see :func:`binding_of`); two calls of one module have different keys.
    binding : Binding
        The module's binding (module, name, rule).
    module : torch.nn.Module
        The module.
    name : str
        Its name in the model.
    inputs : tuple of torch.Tensor
        The floating-point tensor arguments, positional first, then keyword.
    args, kwargs
        The call's arguments (tensors included).
    state : dict
        What the rule's :meth:`~zplug.rules.Rule.compute_forward` kept for the backward pass.
    """

    def __init__(self, node: Any, inputs: tuple[torch.Tensor, ...]) -> None:
        binding: Binding = node.binding
        self.key = node
        self.binding = binding
        self.module = binding.module
        self.name = binding.name
        self.inputs = inputs
        self._spec: _ArgSpec = node.spec
        self.args, self.kwargs = self._spec.rebuild(inputs)
        self._saved_outputs: tuple = node.outputs
        #: What the rule's :meth:`~zplug.rules.Rule.compute_forward` kept for the backward pass (a dict).
        self.state: dict = node.state
        self._op: LayerOp | None = None

    @property
    def op(self) -> LayerOp:
        """The module as an operator of its inputs and parameters (see :mod:`zplug.engine.ops`)."""
        if self._op is None:
            count, binding = len(self.inputs), self.binding
            op = binding.ops.get(count) if self._spec.shared else None
            if op is None:
                op = op_for(self.module, self.args, self.kwargs, binding.original_forward, self._spec.rebuild)
                if self._spec.shared and not isinstance(op, GenericOp):  # a GenericOp keeps the call's arguments
                    binding.ops[count] = op
            self._op = op
        return self._op

    def rebuild(self, tensors: tuple[torch.Tensor, ...]) -> tuple[tuple, dict]:
        """The call's ``(args, kwargs)`` with ``tensors`` in place of :attr:`inputs` (same order)."""
        return self._spec.rebuild(tensors)

    def params(self) -> dict[str, torch.Tensor | None]:
        """The module's direct parameters by name (as canonizers present them)."""
        return params_of(self.module)

    @property
    def output(self) -> torch.Tensor:
        """The module's output of the forward pass (recomputed if it was modified in place since).

        Under ``create_graph`` it is recomputed from the inputs, so that the relevance is
        differentiable through it.
        """
        outputs = self.outputs
        if len(outputs) != 1:
            raise RelevanceError(f"layer '{self.name}' returned {len(outputs)} tensors; this rule needs exactly one")
        return outputs[0]

    @property
    def outputs(self) -> tuple[torch.Tensor, ...]:
        """All tensor outputs of the forward pass."""
        stale = any(t is None or t._version != v for t, v in self._saved_outputs)
        if stale or torch.is_grad_enabled():
            with rule_computation():
                out = self.binding.original_forward(*self.args, **self.kwargs)
            return tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return tuple(t for t, _ in self._saved_outputs)


class _RuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, binding: Binding, spec: _ArgSpec, *tensors: torch.Tensor):
        # A recomputed forward in training mode must draw the same random numbers (dropout) again.
        rng_state = _random_state(tensors) if binding.recomputes and binding.module.training else None
        args, kwargs = spec.rebuild(tensors)
        ctx.state = {}
        if binding.computes_forward:
            output = binding.rule.compute_forward(binding.module, binding.original_forward, args, kwargs, ctx.state)
        else:
            output = binding.original_forward(*args, **kwargs)
        outs = output if isinstance(output, tuple) else (output,)
        if not all(isinstance(o, torch.Tensor) for o in outs):
            raise RelevanceError(
                f"layer '{binding.name}' (rule '{binding.rule.name}') returned {type(output).__name__}; "
                "rules need a tensor or a tuple of tensors as output"
            )
        if any(_aliases(o, tensors) for o in outs):
            # An output sharing memory with an input (an identity such as a merged BatchNorm, a reshape)
            # would be a view of the input to autograd, and a following in-place op (ReLU(inplace=True))
            # fails on views made inside a custom Function: hand out a copy instead.
            outs = tuple(o.clone() if _aliases(o, tensors) else o for o in outs)
            output = outs if isinstance(output, tuple) else outs[0]
        ctx.binding = binding
        ctx.spec = spec
        # Outputs that receive no relevance (CP-LRP's query/key path) arrive as None, not as zeros: a call
        # none of whose outputs receives any is skipped (see backward).
        ctx.set_materialize_grads(False)
        # A pass rule on a one-tensor layer of unchanged shape hands the relevance straight through.
        ctx.shortcut = binding.passes and len(outs) == 1 and len(tensors) == 1 and outs[0].shape == tensors[0].shape
        ctx.save_for_backward(*tensors)
        # Outputs are kept detached (no reference cycle); their version tells if they were changed in place.
        # A rule that recomputes the forward keeps none (they would be recomputed if asked for), only what
        # zeros standing for an output without relevance need.
        ctx.outputs = tuple((None if binding.recomputes else o.detach(), o._version) for o in outs)
        ctx.output_specs = tuple((o.shape, o.dtype, o.device) for o in outs) if binding.recomputes else None
        ctx.rng_state = rng_state
        return output

    @staticmethod
    def backward(ctx, *grad_outputs: torch.Tensor):
        binding: Binding = ctx.binding
        try:
            inputs = ctx.saved_tensors
        except RuntimeError:
            raise RelevanceError(
                f"an input of layer '{binding.name}' (rule '{binding.rule.name}') was modified in place after the "
                "layer's forward pass, so its relevance cannot be computed; make the operation that modified it "
                "out of place (e.g. 'x = x + 1' instead of 'x += 1')"
            ) from None
        if any(g is None for g in grad_outputs):
            if all(g is None for g in grad_outputs) and not binding.observers:
                return (None, None, *(None,) * len(inputs))  # no relevance arrives: none leaves
            grad_outputs = tuple(
                _zeros_for(ctx, i) if g is None else g for i, g in enumerate(grad_outputs)
            )
        if not binding.active:  # after attach_rules exited (e.g. a second-order pass): the plain gradient
            return (None, None, *_plain_gradient(binding, ctx.spec, inputs, grad_outputs))
        if ctx.shortcut and not binding.observers:
            return (None, None, grad_outputs[0])
        call = LayerCall(ctx, inputs)
        with rule_computation():
            if binding.gradient:
                relevance = tuple(binding.rule.gradient(call, grad_outputs))
            else:
                relevance = tuple(binding.rule.backward(call, grad_outputs))
        if len(relevance) != len(inputs):
            raise RelevanceError(
                f"rule '{binding.rule.name}' on layer '{binding.name}' returned {len(relevance)} relevance tensors "
                f"for {len(inputs)} inputs"
            )
        for rel, x in zip(relevance, inputs):
            if rel is not None and rel.shape != x.shape:
                raise RelevanceError(
                    f"rule '{binding.rule.name}' on layer '{binding.name}' returned relevance of shape "
                    f"{tuple(rel.shape)} for an input of shape {tuple(x.shape)}"
                )
        for observer in binding.observers:
            observer(binding, call, grad_outputs, relevance)
        return (None, None, *relevance)


def _random_state(tensors: tuple[torch.Tensor, ...]) -> tuple:
    """The random number generators' states that a forward on ``tensors`` draws from (CPU, and their GPUs)."""
    devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    return torch.get_rng_state(), tuple((d, torch.cuda.get_rng_state(d)) for d in devices)


def _zeros_for(ctx: Any, index: int) -> torch.Tensor:
    """Zeros shaped like output ``index`` of the call (from its shape where the call kept no outputs)."""
    kept = ctx.outputs[index][0]
    if kept is None:
        shape, dtype, device = ctx.output_specs[index]
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.zeros_like(kept)


def _aliases(output: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> bool:
    """True if ``output`` shares storage with one of ``inputs``."""
    pointer = output.untyped_storage().data_ptr()
    return any(pointer == x.untyped_storage().data_ptr() for x in inputs)


#: The class of the autograd nodes that ``_RuleFunction`` makes.
_RULE_NODE: type = _RuleFunction._backward_cls


def binding_of(node: Any) -> Binding | None:
    """Return the binding whose rule computes ``node``'s relevance, or None for any other autograd node.

    ``node`` is a node of an autograd graph (``tensor.grad_fn`` or one of its ``next_functions``);
    for a module call with a rule it is the :attr:`LayerCall.key` that observers receive.
    """
    return node.binding if isinstance(node, _RULE_NODE) else None


def _plain_gradient(binding: Binding, spec: _ArgSpec, inputs: tuple, grad_outputs: tuple) -> tuple:
    """The ordinary vector-Jacobian product of the module's forward with respect to its inputs.

    Parameters are not inputs of the rule's autograd node, so they get no gradient through it.
    """
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad(), rule_computation():
        leaves = tuple(x if (create_graph and x.requires_grad) else x.detach().requires_grad_() for x in inputs)
        # Clones: the restored forward may work in place again (ReLU(inplace=True)), which a leaf forbids.
        args, kwargs = spec.rebuild(tuple(leaf.clone() for leaf in leaves))
        output = binding.original_forward(*args, **kwargs)
        outputs = output if isinstance(output, tuple) else (output,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
        if not pairs:
            return (None,) * len(inputs)
        return torch.autograd.grad(
            [o for o, _ in pairs],
            leaves,
            [g for _, g in pairs],
            allow_unused=True,
            create_graph=create_graph,
        )


class Binding:
    """A rule attached to one module; it stands in for the module's ``forward``.

    Parameters
    ----------
    module : torch.nn.Module
        The module.
    name : str
        Its name in the model (for messages and mappings).
    rule : Rule
        The rule that computes the module's relevance.
    original_forward : Callable
        The forward to run (the module's own, or one a canonizer installed).
    gradient : bool
        Compute in gradient form (:mod:`zplug.engine.gradient_form`): the rule's :meth:`~Rule.gradient`
        instead of its :meth:`~Rule.backward`.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        name: str,
        rule: Rule,
        original_forward: Callable[..., Any],
        *,
        gradient: bool = False,
    ) -> None:
        self.module = module
        self.gradient = gradient
        self.name = name
        self.rule = rule
        self.original_forward = original_forward
        self.observers: list[Observer] = []
        #: Operators of positional-only calls by input count (they depend on the module alone).
        self.ops: dict[int, LayerOp] = {}
        #: The rule passes relevance through unchanged (:attr:`Rule.passes_relevance`): on a one-tensor
        #: call of unchanged shape the relevance goes straight through, without calling the rule.
        self.passes = rule.passes_relevance is True and not gradient  # in gradient form passing is a ratio
        #: A pass-through rule on a forward marked as the identity (:func:`~zplug.engine.mark_identity`):
        #: the plain gradient is already the relevance, so no autograd node is made (unless observers
        #: want to see the layer).
        self.skippable = rule.passes_relevance is True and is_identity(original_forward)
        #: The rule recomputes the module's forward (:attr:`Rule.recomputes`): with observers attached the
        #: module runs as it is, so that they see the rules inside it.
        self.recomputes = rule.recomputes
        #: The rule computes the forward pass itself (:meth:`Rule.compute_forward` overridden).
        self.computes_forward = rule.computes_forward
        #: While True, backward passes through this module compute relevance; ``attach_rules``
        #: sets it to False on exit, so graphs built inside the block then give plain gradients.
        self.active = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the module; under autograd, route its gradient through the rule."""
        if (
            inside_rule()
            or not torch.is_grad_enabled()
            or not self.active
            or (self.skippable and not self.observers)
            or (self.recomputes and bool(self.observers))
        ):
            return self.original_forward(*args, **kwargs)
        if not kwargs and all(isinstance(a, torch.Tensor) and a.is_floating_point() for a in args):
            spec, tensors = _ArgSpec.positional(len(args)), args
        else:
            spec = _ArgSpec(args, kwargs)
            tensors = spec.tensors()
        if not any(t.requires_grad for t in tensors):
            return self.original_forward(*args, **kwargs)
        if spec.shared and not self.observers:
            receivers = self.rule.receivers(self.module, tensors)
            if receivers is not None and len(receivers) < sum(t.requires_grad for t in tensors):
                # Inputs the rule gives no relevance are detached: the graph behind them (CP-LRP's
                # query/key path with its scores and softmax) is freed after the forward pass.
                tensors = tuple(t if i in receivers else t.detach() for i, t in enumerate(tensors))
                if not any(t.requires_grad for t in tensors):
                    return self.original_forward(*tensors)
        return _RuleFunction.apply(self, spec, *tensors)

    def __repr__(self) -> str:
        return f"<Binding {self.name!r}: {self.rule!r}>"


__all__ = ("Binding", "LayerCall", "Observer", "binding_of")
