"""Find the operations of a canonized model with torch.fx (no input needed).

The model is traced as its canonizers left it: a module's instance ``forward`` (a canonizer's) is
traced instead of its class's, and a forward that is a ``torch.fx.GraphModule``'s (``residual_sum``)
is run node by node, so each operation is attributed to the module it was written in. Leaves are
the modules with a rule, the module classes with a declared treatment, and torch's own modules
without children; every other module is traced into, so a custom module's operations are seen.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx
from torch.fx._symbolic_trace import PH

from zplug.coverage.steps import Step
from zplug.coverage.treatments import CUTTING_OPS, TENSOR_ATTRIBUTES, TreatmentTable, describe_callable, op_name


class FxTraceError(Exception):
    """torch.fx cannot trace the model; the message says why."""


class _Root(torch.nn.Module):
    """Calls the model, so that the model's own (possibly replaced) ``forward`` is traced like a module's."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Any) -> Any:
        return self.model(*inputs)


class _Tracer(torch.fx.Tracer):
    """Records, for every node, the module it belongs to (``node.meta["zplug_where"]``)."""

    def __init__(self, names: Mapping[int, str], ruled: set[int], table: TreatmentTable) -> None:
        super().__init__()
        self.names = names
        self.ruled = ruled
        self.table = table
        self.where: list[str] = [""]
        self.leaf: str | None = None
        self.called: set[str] = set()

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if id(m) in self.ruled or self.table.module(m) is not None:
            return True
        if "forward" in m.__dict__:
            return False  # a canonizer's forward: trace what it does
        torch_module = m.__module__.startswith(("torch.nn", "torch.ao.nn"))
        return torch_module and next(m.children(), None) is None

    def call_module(self, m: torch.nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        name = self.names.get(id(m))
        if name is not None:
            self.called.add(name)
        if self.is_leaf_module(m, ""):
            self.leaf = name if name is not None else self.where[-1]
            try:
                return super().call_module(m, forward, args, kwargs)
            finally:
                self.leaf = None
        self.where.append(name if name is not None else self.where[-1])
        try:
            graph_module = graph_module_forward(m)
            if graph_module is not None:
                prefix = self.where[-1]

                def forward(*a: Any, **k: Any) -> Any:  # noqa: ARG001 - fx calls it with the module's arguments
                    return _Interpreter(graph_module, self, prefix).run(*a)

            return super().call_module(m, forward, args, kwargs)
        finally:
            self.where.pop()

    def create_node(self, kind: str, target: Any, args: tuple, kwargs: dict, name: str | None = None,
                    type_expr: Any = None) -> torch.fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if kind == "call_module":
            node.meta["zplug_where"] = self.leaf if self.leaf is not None else self.where[-1]
        else:
            node.meta["zplug_where"] = self.where[-1]
        return node


class _Interpreter(torch.fx.Interpreter):
    """Runs a GraphModule's graph on proxies, attributing each node to the module that wrote it."""

    def __init__(self, module: torch.fx.GraphModule, tracer: _Tracer, prefix: str) -> None:
        super().__init__(module, garbage_collect_values=False)
        self.tracer = tracer
        self.prefix = prefix

    def run_node(self, n: torch.fx.Node) -> Any:
        self.tracer.where.append(node_owner(n, self.prefix))
        try:
            return super().run_node(n)
        finally:
            self.tracer.where.pop()


def node_owner(node: torch.fx.Node, prefix: str) -> str:
    """The module that wrote ``node`` of a GraphModule installed on the module named ``prefix``."""
    stack = node.meta.get("nn_module_stack") or {}
    owner = ""
    if stack:
        path = list(stack.values())[-1]
        owner = path[0] if isinstance(path, tuple) else str(path)
    return ".".join(p for p in (prefix, owner) if p)


def graph_module_forward(module: torch.nn.Module) -> torch.fx.GraphModule | None:
    """The GraphModule whose ``forward`` a canonizer installed on ``module``, if any."""
    forward = module.__dict__.get("forward")
    rewrite = getattr(forward, "rewrite", None)  # a checked rewrite (zplug.canonizers.rewrite.CheckedForward)
    if rewrite is not None:
        forward = rewrite.forward
    owner = getattr(forward, "__self__", None)
    return owner if isinstance(owner, torch.fx.GraphModule) and owner is not module else None


def _positional_inputs(model: torch.nn.Module) -> int:
    """How many required positional arguments the model's forward takes (they become the traced inputs)."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in signature.parameters.values() if p.kind in kinds and p.default is p.empty) or 1


def trace_steps(
    model: torch.nn.Module, rules: Mapping[str, Any], table: TreatmentTable
) -> tuple[list[Step], set[str]]:
    """Trace ``model`` and return its operations on the differentiable path, and the modules called.

    Raises
    ------
    FxTraceError
        With torch.fx's reason.
    """
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    ruled = {id(modules[n]) for n in rules if n in modules}
    tracer = _Tracer(names, ruled, table)
    try:
        graph = tracer.trace(_Root(model), concrete_args=(PH,) * _positional_inputs(model))
    except Exception as exc:  # fx raises many kinds of errors; all mean "cannot trace"
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        reason = f"{type(exc).__name__}: {first[:200]}"
        raise FxTraceError(f"torch.fx cannot trace {type(model).__name__} ({reason})") from exc
    called = set(tracer.called)
    for name in tracer.called:  # what a leaf module calls inside is not traced: count it as called
        if id(modules[name]) in ruled or tracer.table.module(modules[name]) is not None:
            prefix = f"{name}." if name else ""
            called.update(n for n in modules if n.startswith(prefix))
    return _steps(graph, tracer), called


def _operation(node: torch.fx.Node) -> tuple[str, bool]:
    """``(name, cuts)``: the operation's name and whether it ends the differentiable path."""
    if node.target is getattr and len(node.args) > 1:
        attribute = node.args[1]
        if attribute in TENSOR_ATTRIBUTES:
            return TENSOR_ATTRIBUTES[attribute], False
        return "getattr", True
    name = op_name(describe_callable(node.target))
    return name, name in CUTTING_OPS


def _steps(graph: torch.fx.Graph, tracer: _Tracer) -> list[Step]:
    root = tracer.root
    on_input: dict[torch.fx.Node, bool] = {}
    output = None
    for node in graph.nodes:
        if node.op == "placeholder":
            on_input[node] = True
        elif node.op == "output":
            output = node
        elif node.op in ("call_function", "call_method", "call_module"):
            cuts = node.op != "call_module" and _operation(node)[1]
            on_input[node] = not cuts and any(on_input.get(a, False) for a in node.all_input_nodes)
        else:
            on_input[node] = False
    # Backwards from the output: only what reaches it counts.
    reaches: set[torch.fx.Node] = set()
    pending = [a for a in (output.all_input_nodes if output is not None else ()) if on_input.get(a)]
    while pending:
        node = pending.pop()
        if node in reaches:
            continue
        reaches.add(node)
        pending.extend(a for a in node.all_input_nodes if on_input.get(a))
    steps: dict[torch.fx.Node, Step] = {}
    for node in graph.nodes:
        if node not in reaches or node.op == "placeholder":
            continue
        operands = sum(1 for a in _flat_args(node) if a in reaches)
        where = node.meta.get("zplug_where", "")
        if node.op == "call_module":
            module = root.get_submodule(node.target)
            name = tracer.names.get(id(module), where)
            steps[node] = Step(where=name, op=type(module).__name__, operands=operands, module=module, name=name)
        else:
            op, _ = _operation(node)
            steps[node] = Step(where=where, op=op, operands=operands, target=node.target)
    for node, step in steps.items():
        for user in node.users:
            if user in steps:
                step.consumers.append(steps[user])
            elif user is output:
                step.output = True
    return list(steps.values())


def _flat_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    """Every node argument of ``node``, repeated as often as it is passed (``x * x`` has two)."""
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) or a)
    return found


__all__ = ("FxTraceError", "graph_module_forward", "node_owner", "trace_steps")
