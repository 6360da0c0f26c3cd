"""Route tensor additions through ``zplug.layers.Sum`` modules, found by tracing with ``torch.fx``.

A residual connection ``out = block(x) + x`` is a functional addition: no module call, so no
rule sees it and the plain gradient copies the full relevance to both summands (relevance
is created out of nothing; Zennit's ResNet18 without canonizer sums to 243 instead of 1).
:class:`ResidualSum` traces the model, replaces each addition of two tensors by a call of a
``Sum`` module registered (temporarily) as a child of the module in which the addition was
written, and installs the rewritten graph as the model's ``forward``. With ``Sum -> norm``
each summand receives relevance in proportion to its contribution.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import attrs

from zplug._lazy import lazy_module
from zplug.canonizers._patch import free_name, patching
from zplug.canonizers.base import Canonizer

# Declaring the canonizer (to register or list it) needs no torch: it is imported on first use.
torch = lazy_module("torch")
_ADD_METHODS = ("add", "add_", "__add__", "__iadd__")
#: Node producers whose results are shapes or numbers, not tensors.
_NON_TENSOR_METHODS = ("size", "dim", "numel", "item", "tolist", "stride", "__len__")


def _non_tensor(node: object) -> bool:
    if not isinstance(node, torch.fx.Node):
        return True
    if node.op == "call_method" and node.target in _NON_TENSOR_METHODS:
        return True
    if node.op == "call_function":
        if node.target is getattr and len(node.args) > 1 and node.args[1] in ("shape", "ndim", "dtype", "device"):
            return True
        if node.target in (len, operator.getitem) and node.args and _non_tensor(node.args[0]):
            return True
        if node.target in (operator.add, operator.sub, operator.mul, operator.floordiv) and all(
            _non_tensor(a) for a in node.args
        ):
            return True  # arithmetic on shapes and numbers only
    return False


def _is_tensor_addition(node: torch.fx.Node) -> bool:
    """True for ``a + b``, ``a += b``, ``torch.add(a, b)`` and ``a.add(b)`` with two tensor operands."""
    if node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add):
        extra = {k: v for k, v in node.kwargs.items() if k != "alpha" or v != 1}
    elif node.op == "call_method" and node.target in _ADD_METHODS:
        extra = {k: v for k, v in node.kwargs.items() if k != "alpha" or v != 1}
    else:
        return False
    return len(node.args) == 2 and not extra and not any(_non_tensor(a) for a in node.args)


def _mutates_shared(node: torch.fx.Node) -> bool:
    """An in-place addition whose first operand is used after it cannot become out of place."""
    if node.target not in (operator.iadd, "add_", "__iadd__"):
        return False
    first = node.args[0]
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    return any(order[user] > order[node] for user in first.users if user is not node)


def _owner(node: torch.fx.Node) -> str:
    """The qualified name of the module whose forward wrote the addition (``""`` for the model)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1]
    return path[0] if isinstance(path, tuple) else str(path)


def additions(model: torch.nn.Module) -> list[tuple[str, str]]:
    """List the tensor additions ``torch.fx`` finds in ``model``: ``[(owner module, code), ...]``.

    Raises
    ------
    zplug.canonizers._trace.NotTraceableError
        If the model cannot be traced.
    """
    from zplug.canonizers._trace import trace

    graph = trace(model, "residual_sum")
    return [(_owner(n), _code(n)) for n in graph.nodes if _is_tensor_addition(n) and not _mutates_shared(n)]


def _code(node: torch.fx.Node) -> str:
    """``add = layer1_0_bn2 + maxpool``: the addition as the tracer recorded it."""
    return f"{node.name} = {' + '.join(str(a) for a in node.args)}"


@attrs.frozen(kw_only=True)
class ResidualSum(Canonizer):
    """Make every addition of two tensors a ``Sum`` module call, so that rules (``norm``) see it.

    The model is traced with ``torch.fx`` (its class's ``forward``; torch's own modules,
    ``Sum`` and already canonized modules are leaves). Each ``a + b``, ``a += b``,
    ``torch.add(a, b)`` is replaced by ``Sum()(a, b)``; the ``Sum`` is registered as a child
    of the module in which the addition was written, named ``residual_sum`` (``_1``, ``_2``
    ... if needed), so mappings list it as ``layer1.0.residual_sum``. The rewritten graph
    becomes the model's ``forward``. Everything is undone on exit.

    Raises
    ------
    zplug.canonizers.base.CanonizerError
        If ``torch.fx`` cannot trace the model (the message says why and what to do).
    """

    name: ClassVar[str] = "residual_sum"
    summary: ClassVar[str] = "route tensor additions (residual connections) through Sum modules (torch.fx)"

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Install the ``Sum`` modules and the rewritten forward; undo both on exit."""
        from zplug.canonizers._trace import constants, trace
        from zplug.layers import Sum

        traced = trace(model, self.name)
        targets = [n for n in traced.nodes if _is_tensor_addition(n) and not _mutates_shared(n)]
        if not targets:
            yield model
            return
        graph = torch.fx.Graph()
        mapping: dict[torch.fx.Node, torch.fx.Node] = {}
        graph.output(graph.graph_copy(traced, mapping))
        modules = dict(model.named_modules())
        with patching() as stack:
            for old in targets:
                node = mapping[old]
                owner_name = _owner(node) if _owner(node) in modules else ""
                owner = modules[owner_name]
                child = free_name(owner, "residual_sum")
                stack.child(owner, child, Sum())
                qualified = f"{owner_name}.{child}" if owner_name else child
                with graph.inserting_before(node):
                    call = graph.call_module(qualified, tuple(node.args))
                call.meta = dict(node.meta)
                node.replace_all_uses_with(call)
                graph.erase_node(node)
            graph.lint()
            with patching() as constants_on_model:  # the graph module copies them; the model keeps none
                for key, value in constants(traced).items():
                    constants_on_model.attribute(model, key, value)
                module = torch.fx.GraphModule(model, graph, class_name=f"{type(model).__name__}ResidualSum")
            stack.attribute(model, "forward", module.forward)
            yield model

    def describe(self, model: torch.nn.Module) -> list[str]:
        """One line per addition routed through a ``Sum``."""
        return [f"{owner or '<model>'}: route '{code}' through a Sum module" for owner, code in additions(model)]


__all__ = ("ResidualSum", "additions")
