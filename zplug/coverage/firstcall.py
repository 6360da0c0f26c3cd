"""Find the operations of a model from the autograd graph of its first call (where torch.fx cannot trace it).

While a mapping is applied, :class:`FirstCall` hooks every module: each call records its inputs,
its outputs and the autograd sequence numbers at its start and end (every autograd node gets the
next number when it is created, so the numbers tell in which module call a node was made). When
the model's own call returns, with an input that requires a gradient, the graph is walked from
the output towards the inputs:

* a node that a module with a rule produced is that module's call; the walk continues at the
  call's inputs, so the rule's inside is not looked at (likewise for an unruled call of a module
  whose treatment is declared, and of torch's own modules without children);
* every other node is an operation of the module whose call made it (``MulBackward0`` in
  ``features.3.se`` is ``features.3.se: mul``);
* only nodes with a path to an input count: what only involves parameters and buffers (a mask,
  a positional table) is not on the path from the input to the output.

The hooks are removed after the first analysed call (or when the mapping's ``with`` block ends).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import torch

from zplug.coverage.steps import Step
from zplug.coverage.treatments import TreatmentTable, op_name

_probe_leaf: torch.Tensor | None = None


def _sequence_now() -> int:
    """The autograd sequence number the next node will get (a probe node takes one)."""
    global _probe_leaf
    if _probe_leaf is None:
        _probe_leaf = torch.zeros((), requires_grad=True)
    with torch.enable_grad():
        return _probe_leaf.view(()).grad_fn._sequence_nr() + 1


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) argument or output structure."""
    found: list[torch.Tensor] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (tuple, list)):
            stack.extend(reversed(item))
        elif isinstance(item, Mapping):
            stack.extend(reversed(list(item.values())))
    return found


@attrs.frozen
class _Seen:
    """A tensor as a call saw it: its identity and its autograd node at that moment (in-place ops move it)."""

    id: int
    node: Any
    requires_grad: bool
    signature: tuple

    @classmethod
    def of(cls, tensor: torch.Tensor) -> _Seen:
        return cls(id(tensor), tensor.grad_fn, tensor.requires_grad, (tuple(tensor.shape), tensor.dtype))


@attrs.define(eq=False)
class _Call:
    """One module call (or, for a GraphModule forward, one node of its graph: ``module`` is then None)."""

    name: str
    module: torch.nn.Module | None
    start: int
    inputs: list[_Seen] = attrs.field(factory=list)
    end: int = -1
    outputs: list[Any] = attrs.field(factory=list)  # the autograd nodes of the outputs, as returned


class FirstCall:
    """Hooks that analyse the autograd graph of the first call of ``model`` (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        The model, with canonizers and rules applied.
    rules : Mapping[str, Rule]
        ``{module name: rule}``.
    table : TreatmentTable
        The declared treatments.
    on_result : callable
        Called with the :class:`~zplug.coverage.Coverage` once a call was analysed (it may raise:
        the exception leaves the model's call, after the hooks are removed).
    key : tuple or None
        The mapping's cache key; with the input shapes it finds an earlier result for the same model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        rules: Mapping[str, Any],
        table: TreatmentTable,
        on_result: Callable[[Any], None],
        *,
        key: tuple | None = None,
    ) -> None:
        self.model = model
        self.rules = dict(rules)
        self.table = table
        self.on_result = on_result
        self.key = key
        self.calls: list[_Call] = []
        self.stack: list[_Call] = []
        self.called: set[str] = set()
        self.done = False
        self.handles: list[Any] = []
        self.replaced: list[tuple[torch.nn.Module, Any, Any]] = []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._pre(name, module), with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._post(name), with_kwargs=True))
            if name not in self.rules:
                self._interpret_graph_forward(name, module)

    def remove(self) -> None:
        """Remove the hooks and put back the forwards run node by node (idempotent)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for module, original, mine in reversed(self.replaced):
            if module.__dict__.get("forward") is mine:
                module.__dict__["forward"] = original
        self.replaced = []
        self.calls, self.stack = [], []

    def _interpret_graph_forward(self, name: str, module: torch.nn.Module) -> None:
        """Run a GraphModule forward (``residual_sum``'s) node by node, so that each node's module is known.

        The GraphModule inlines the modules it traced through; its nodes remember them
        (``nn_module_stack``), and each node's sequence numbers become a pseudo-call of that module.
        """
        from zplug.coverage.fx import graph_module_forward, node_owner

        graph_module = graph_module_forward(module)
        if graph_module is None:
            return
        import torch.fx

        recorder = self
        signature = inspect.signature(graph_module.forward)

        class Recording(torch.fx.Interpreter):
            def run_node(self, n: torch.fx.Node) -> Any:
                if recorder.done or not torch.is_grad_enabled():
                    return super().run_node(n)
                call = _Call(name=node_owner(n, name), module=None, start=_sequence_now())
                result = super().run_node(n)
                call.end = _sequence_now()
                recorder.calls.append(call)
                return result

        original = module.__dict__["forward"]
        checked = original if hasattr(original, "confirm") and not original.checked else None

        def forward(*args: Any, **kwargs: Any) -> Any:
            # A rewrite not yet compared with the module's original forward is compared here too.
            expected = checked.expected(*args, **kwargs) if checked is not None else None
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            output = Recording(graph_module).run(*bound.arguments.values())
            if checked is not None and not checked.checked:
                checked.confirm(output, expected)
            return output

        module.__dict__["forward"] = forward
        self.replaced.append((module, original, forward))

    # -- recording -----------------------------------------------------------------------------
    def _pre(self, name: str, module: torch.nn.Module):
        def hook(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if self.done:
                return
            self.called.add(name)
            if not torch.is_grad_enabled():
                return
            if mod is self.model:
                self.calls, self.stack = [], []
                if self._from_cache(args, kwargs):
                    return
            inputs = [_Seen.of(t) for t in _tensors((args, kwargs))]
            self.stack.append(_Call(name=name, module=module, start=_sequence_now(), inputs=inputs))

        return hook

    def _post(self, name: str):
        def hook(mod: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if self.done or not torch.is_grad_enabled() or not self.stack or self.stack[-1].module is not mod:
                return
            call = self.stack.pop()
            call.end = _sequence_now()
            call.outputs = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
            self.calls.append(call)
            if mod is self.model:
                self._finish(call)

        return hook

    def _input_key(self, inputs: Iterable[_Seen]) -> tuple | None:
        if self.key is None:
            return None
        return (*self.key, "first call", tuple((t.signature, t.requires_grad) for t in inputs))

    def _from_cache(self, args: tuple, kwargs: dict) -> bool:
        from zplug.coverage import cached

        found = cached(self.model, self._input_key(_Seen.of(t) for t in _tensors((args, kwargs))))
        if found is None:
            return False
        self._deliver(found)
        return True

    def _finish(self, root: _Call) -> None:
        inputs = [t for t in root.inputs if t.requires_grad]
        if not inputs:
            self.calls = []
            return  # nothing to follow: wait for a call with an input that requires a gradient
        from zplug.coverage import remember, summarise

        steps = self.steps(root, inputs)
        coverage = summarise("autograd graph of the first call", self.model, steps, self.called, self.rules, self.table)
        remember(self.model, self._input_key(root.inputs), coverage)
        self._deliver(coverage)

    def _deliver(self, coverage: Any) -> None:
        self.done = True
        self.remove()
        self.on_result(coverage)

    # -- the graph -------------------------------------------------------------------------------
    def _opaque(self, call: _Call) -> bool:
        """Whether the walk treats ``call`` as one operation (a rule, a declared or a torch leaf module)."""
        module = call.module
        if call.name in self.rules or self.table.module(module) is not None:
            return True
        torch_module = type(module).__module__.startswith(("torch.nn", "torch.ao.nn"))
        return torch_module and next(module.children(), None) is None and "forward" not in module.__dict__

    def steps(self, root: _Call, inputs: list[_Seen]) -> list[Step]:
        """The operations on the path from ``inputs`` to the root call's outputs."""
        leaf_inputs = {t.id for t in inputs if t.node is None}
        boundary = {id(t.node) for t in inputs if t.node is not None}
        made_by: dict[int, _Call] = {}  # output node -> the (outermost) opaque call that made it
        for call in sorted(self.calls, key=lambda c: c.start):
            if call is root or call.module is None or not self._opaque(call):
                continue
            for node in call.outputs:
                if call.start <= node._sequence_nr() < call.end:
                    made_by.setdefault(id(node), call)
        source = object()  # the inputs

        def children(node: Any) -> list[Any]:
            if id(node) in boundary:
                return [source]
            call = made_by.get(id(node))
            if call is not None:
                found = []
                for t in call.inputs:
                    if t.id in leaf_inputs and t.node is None:
                        found.append(source)
                    elif t.node is not None:
                        found.append(source if id(t.node) in boundary else t.node)
                return found
            variable = getattr(node, "variable", None)
            if variable is not None:
                return [source] if id(variable) in leaf_inputs else []
            return [child for child, _ in node.next_functions if child is not None]

        kids: dict[int, list[Any]] = {}
        reach: dict[int, bool] = {}
        nodes: dict[int, Any] = {}
        outputs = list(root.outputs)
        pending = [(node, False) for node in outputs]
        while pending:
            node, expanded = pending.pop()
            if expanded:
                reach[id(node)] = any(k is source or reach.get(id(k), False) for k in kids[id(node)])
                continue
            if id(node) in kids:
                continue
            found = children(node)
            kids[id(node)] = found
            nodes[id(node)] = node
            pending.append((node, True))
            pending.extend((k, False) for k in found if k is not source and id(k) not in kids)
        by_node: dict[int, Step] = {}  # node -> its step (the nodes of one opaque call share one)
        by_call: dict[int, Step] = {}
        first: dict[int, int] = {}  # step -> the smallest sequence number of its nodes (forward order)
        for key, node in nodes.items():
            if not reach.get(key) or getattr(node, "variable", None) is not None or key in boundary:
                continue
            operands = sum(1 for k in kids[key] if k is source or reach.get(id(k), False))
            call = made_by.get(key)
            if call is None:
                step = Step(where="", op=op_name(type(node).__name__), operands=operands)
            else:
                step = by_call.get(id(call))
                if step is None:
                    step = by_call[id(call)] = Step(where=call.name, op=type(call.module).__name__,
                                                    operands=operands, module=call.module, name=call.name)
            by_node[key] = step
            sequence = node._sequence_nr()
            first[id(step)] = min(first.get(id(step), sequence), sequence)
        self._place([(nodes[k]._sequence_nr(), s) for k, s in by_node.items() if s.module is None])
        for key, step in by_node.items():
            for kid in kids[key]:
                below = by_node.get(id(kid)) if kid is not source else None
                if below is not None and below is not step and step not in below.consumers:
                    below.consumers.append(step)
        for node in outputs:
            if id(node) in by_node:
                by_node[id(node)].output = True
        unique = {id(s): s for s in by_node.values()}
        return sorted(unique.values(), key=lambda s: first[id(s)])

    def _place(self, ops: list[tuple[int, Step]]) -> None:
        """Attribute each operation to the innermost module call during which its node was made."""
        calls = sorted(self.calls, key=lambda c: c.start)
        active: list[_Call] = []
        i = 0
        for sequence, step in sorted(ops, key=lambda item: item[0]):
            while i < len(calls) and calls[i].start <= sequence:
                while active and active[-1].end <= calls[i].start:
                    active.pop()
                active.append(calls[i])
                i += 1
            while active and active[-1].end <= sequence:
                active.pop()
            step.where = active[-1].name if active else ""


__all__ = ("FirstCall",)
