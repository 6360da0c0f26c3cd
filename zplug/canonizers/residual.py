"""Route tensor additions through ``zplug.layers.Sum`` modules, module by module (``torch.fx``).

A residual connection ``out = block(x) + x`` is a functional addition: no module call, so no
rule sees it and the plain gradient copies the full relevance to both summands (relevance
is created out of nothing; Zennit's ResNet18 without canonizer sums to 243 instead of 1).
:class:`ResidualSum` traces each module's own forward (its children are leaves, so they stay
module calls and keep their rules: a squeeze-excitation inside a residual block is still called
as a module), replaces each addition of two tensors by a call of a ``Sum`` child registered for
the duration, and installs the rewritten forward on that module. With ``Sum -> norm`` each
summand receives relevance in proportion to its contribution. Each rewritten forward is
compared with the original on its first call (torch.fx fixes Python control flow while
tracing); a difference undoes the rewrite and raises :class:`CanonizerError`.
"""

from __future__ import annotations

import operator
from typing import ClassVar

import attrs

from zplug._lazy import lazy_module
from zplug.canonizers.rewrite import ForwardRewrite, Rewrite
from zplug.errors import CanonizerError

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


#: The name of the ``Sum`` children (``residual_sum_1``, ... where taken).
CHILD = "residual_sum"
_SUMS = frozenset({"sum"})


def additions(model: torch.nn.Module) -> list[tuple[str, str]]:
    """List the tensor additions found in the modules' own forwards: ``[(module name, code), ...]``.

    Modules that ``torch.fx`` cannot trace are skipped (see :func:`untraceable`).
    """
    from zplug.canonizers._attention_impl import _Builder, _candidates, _trace_own

    found = []
    for name, module in _candidates(model):
        try:
            graph, _ = _trace_own(module)
        except Exception:  # noqa: BLE001 -- reported by untraceable()
            continue
        found.extend((name, code) for code in _Builder(module, graph, _SUMS).additions())
    return found


@attrs.frozen(kw_only=True)
class ResidualSum(ForwardRewrite):
    """Make every addition of two tensors a ``Sum`` module call, so that rules (``norm``) see it.

    Each module's own forward (not torch's or zplug's modules) is traced with ``torch.fx``,
    its children as leaves; each ``a + b``, ``a += b``, ``torch.add(a, b)`` of two tensors is
    replaced by a call of a ``Sum`` child named ``residual_sum`` (``_1``, ``_2`` ... if
    taken), so mappings list it as ``layer1.0.residual_sum``. Modules that cannot be traced
    keep their forward and are listed by :meth:`describe`; the coverage analysis reports any
    addition left in them. Everything is undone on exit.

    Raises
    ------
    zplug.canonizers.base.CanonizerError
        If no module could be rewritten because ``torch.fx`` cannot trace the model (the
        message says why and what to do), or if a rewritten forward computes something else
        than the original on its first call.
    """

    name: ClassVar[str] = "residual_sum"
    summary: ClassVar[str] = "route tensor additions (residual connections) through Sum modules (torch.fx)"

    def _plan(self, model: torch.nn.Module) -> tuple[list[Rewrite], list[str]]:
        from zplug.canonizers._attention_impl import functional_rewrites

        return functional_rewrites(model, _SUMS, {"sum": CHILD})

    def rewrites(self, model: torch.nn.Module) -> list[Rewrite]:
        """One rewrite per module with additions; an error if nothing is traceable."""
        plan, untraceable = self._plan(model)
        if not plan and untraceable:
            raise CanonizerError(
                f"{self.name}: torch.fx cannot trace {type(model).__name__} ({'; '.join(untraceable)}). Typical "
                "causes are Python control flow on tensor values or shapes, or calls fx cannot record. Fix: make "
                "the model traceable (e.g. move the data-dependent part into a submodule), or write the operation "
                "with modules (zplug.Sum()(a, b) instead of a + b), or use a model-specific canonizer from a plugin"
            )
        return plan

    def describe(self, model: torch.nn.Module) -> list[str]:
        """One line per addition routed through a ``Sum``, and one per module that cannot be traced."""
        plan, untraceable = self._plan(model)
        lines = [f"{r.name or '<model>'}: route '{code}' through a Sum module" for r in plan for code in r.additions]
        return lines + [f"{line}; additions written there get no rule" for line in untraceable]


__all__ = ("CHILD", "ResidualSum", "additions")
