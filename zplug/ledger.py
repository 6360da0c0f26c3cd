"""The conservation ledger: where relevance went, layer by layer.

For one LRP backward pass the ledger records, for every layer with a rule (in forward
execution order), the relevance entering it from the output side and leaving it towards
the input, and so how much the rule absorbed (split into stabiliser and bias where the rule
allows it). Operations without a rule (a functional ``+``, an activation left unmapped)
pass the plain gradient, which need not conserve relevance: the ledger finds them in the
autograd graph and reports what they leaked. Every bit of lost relevance is accounted for::

    output relevance = input relevance + sum(absorbed) + sum(leaked)   (up to round-off)

How it works: the engine calls :meth:`Ledger.observe` after each rule computation (an
engine observer, :data:`zplug.engine.Observer`); the rule's own :meth:`~zplug.rules.Rule.absorption`
says how much of what it absorbed is the stabiliser's and the bias's. Just before the backward
pass, :meth:`Ledger.trace` walks the autograd graph from the output: rule nodes
(:func:`zplug.engine.binding_of`) are layers, matched to their observations by the call's key
(:attr:`zplug.engine.LayerCall.key`); the other nodes between them form *regions* (connected
groups of un-ruled operations), each fed by the layers (or the output) above and feeding the
layers (or the inputs) below. A region's leak is what entered it minus what left it. Nothing
is attached when no ledger is requested.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import torch

from zplug.engine.function import Binding, LayerCall, binding_of
from zplug.errors import RelevanceError
from zplug.rules.base import Absorption, Rule, relevance_total


@attrs.frozen(kw_only=True)
class LedgerEntry:
    """One row of the ledger.

    Attributes
    ----------
    kind : str
        ``"layer"`` (a module with a rule) or ``"leak"`` (operations without a rule).
    name : str
        The module's name, or the un-ruled operations (module names where known).
    rule : str
        The rule, or ``"(no rule)"``.
    relevance_in : float
        Relevance entering from the output side (summed over the batch).
    relevance_out : float
        Relevance leaving towards the input side.
    stabilizer : float or None
        Part of the absorbed relevance due to the stabiliser (epsilon), where the rule allows the split.
    bias : float or None
        Part of the absorbed relevance due to the bias, where the rule allows the split.
    """

    kind: str
    name: str
    rule: str
    relevance_in: float
    relevance_out: float
    stabilizer: float | None = None
    bias: float | None = None

    @property
    def lost(self) -> float:
        """``relevance_in - relevance_out``: absorbed by a layer's rule, or leaked by un-ruled operations."""
        return self.relevance_in - self.relevance_out


class Ledger:
    """Per-layer relevance account of one LRP backward pass (see the module docstring).

    Attributes
    ----------
    entries : list of LedgerEntry
        Layers and leaks in forward execution order (after :meth:`finish`).
    output : float
        Relevance put on the model output (the sum of the output relevance).
    input : float
        Relevance that reached the inputs.
    """

    def __init__(self) -> None:
        self.entries: list[LedgerEntry] = []
        self.output = 0.0
        self.input = 0.0
        self._observed: dict[int, tuple[tuple[float, ...], tuple[float, ...], float | None, float | None]] = {}
        self._module_names: dict[int, tuple[Any, str]] = {}  # id(node) -> (node, module name)
        self._graph: _Graph | None = None

    # -- collection --------------------------------------------------------------------------
    def observe(self, binding: Binding, call: LayerCall, grad_outputs: tuple, relevance: tuple) -> None:
        """Engine observer: record the relevance sums of one rule computation, and the rule's split."""
        received = tuple(relevance_total(g) for g in grad_outputs)
        # Relevance handed to an input that needs no gradient (a constant, e.g. a detached bias) goes
        # nowhere in the graph: the layer absorbed it.
        emitted = tuple(relevance_total(r) if x.requires_grad else 0.0 for r, x in zip(relevance, call.inputs))
        with torch.no_grad():
            split = binding.rule.absorption(call, grad_outputs, relevance)
        if split is not None and not isinstance(split, Absorption):
            raise RelevanceError(
                f"rule '{binding.rule.name}' on layer '{binding.name}': absorption() returned "
                f"{type(split).__name__}; return a zplug.rules.Absorption or None"
            )
        stabilizer, bias = (None, None) if split is None else (split.stabilizer, split.bias)
        self._observed[id(call.key)] = (received, emitted, stabilizer, bias)

    @contextmanager
    def watching(self, model: torch.nn.Module) -> Iterator[None]:
        """Remember which leaf module produced which autograd node, to name un-ruled operations."""

        def hook(name: str):
            def record(module: torch.nn.Module, args: Any, output: Any) -> None:
                outs = output if isinstance(output, (tuple, list)) else (output,)
                for out in outs:
                    if isinstance(out, torch.Tensor) and out.grad_fn is not None:
                        node = out.grad_fn
                        self._module_names.setdefault(id(node), (node, f"{name} ({type(module).__name__})"))

            return record

        handles = [
            module.register_forward_hook(hook(name))
            for name, module in model.named_modules()
            if name and not any(True for _ in module.children())
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def trace(self, inputs: Sequence[torch.Tensor], output: torch.Tensor, grad_output: torch.Tensor) -> None:
        """Walk the autograd graph from ``output`` (call it before the backward pass)."""
        self.output = relevance_total(grad_output)
        self._graph = _Graph(inputs, output, self._module_names)

    def finish(self, input_relevance: Sequence[torch.Tensor]) -> Ledger:
        """Combine the observations with the graph into :attr:`entries` (call it after the backward pass)."""
        self.input = sum(relevance_total(r) for r in input_relevance)
        graph = self._graph
        if graph is None:
            raise RuntimeError("Ledger.trace() was not called before the backward pass")
        emitted: dict[Any, float] = {("top",): self.output}
        received: dict[Any, float] = {("in", i): relevance_total(r) for i, r in enumerate(input_relevance)}
        rows: list[tuple[int, LedgerEntry]] = []
        for node in graph.layers:
            got, gave, stabilizer, bias = self._observed.get(id(node), ((), (), None, None))
            for idx, value in enumerate(got):
                received[("out", id(node), idx)] = value
            for j, value in enumerate(gave):
                emitted[("edge", id(node), j)] = value
            binding = binding_of(node)
            entry = LedgerEntry(
                kind="layer", name=binding.name, rule=_rule_label(binding.rule), relevance_in=sum(got),
                relevance_out=sum(gave), stabilizer=stabilizer, bias=bias,
            )
            rows.append((node._sequence_nr(), entry))
        for region in graph.regions():
            if not region.ops:
                continue
            into = sum(emitted.get(key, 0.0) for key in region.keys)
            out_of = sum(received.get(key, 0.0) for key in region.keys)
            entry = LedgerEntry(kind="leak", name=region.label(), rule="(no rule)", relevance_in=into,
                                relevance_out=out_of)
            rows.append((region.sequence, entry))
        self.entries = [entry for _, entry in sorted(rows, key=lambda r: r[0])]
        self._graph = None
        return self

    # -- results -----------------------------------------------------------------------------
    @property
    def absorbed(self) -> float:
        """Relevance absorbed by the rules (bias, stabiliser, dropped neurons), summed over layers."""
        return sum(e.lost for e in self.entries if e.kind == "layer")

    @property
    def leaked(self) -> float:
        """Relevance lost (or, if negative, created) by operations without a rule."""
        return sum(e.lost for e in self.entries if e.kind == "leak")

    @property
    def residual(self) -> float:
        """``output - input - absorbed - leaked``: round-off only."""
        return self.output - self.input - self.absorbed - self.leaked

    def layer(self, name: str) -> LedgerEntry:
        """Return the (first) entry of the layer named ``name``."""
        for entry in self.entries:
            if entry.kind == "layer" and entry.name == name:
                return entry
        raise KeyError(f"no layer '{name}' in the ledger (layers: {', '.join(e.name for e in self.entries)})")

    def leaks(self) -> list[LedgerEntry]:
        """Return the leak entries."""
        return [e for e in self.entries if e.kind == "leak"]

    def to_dicts(self) -> list[dict[str, Any]]:
        """Return the entries as JSON-ready dictionaries (with ``lost``)."""
        return [{**attrs.asdict(e), "lost": e.lost} for e in self.entries]

    def __str__(self) -> str:
        header = ("layer", "rule", "R in", "R out", "absorbed", "stabiliser", "bias", "leaked")
        lines = []
        scale = max(abs(self.output), 1e-30)
        for e in self.entries:
            if e.kind == "leak" and abs(e.lost) <= 1e-6 * scale:
                continue  # conservative un-ruled operations (views, flatten, max-pool routing)
            is_layer = e.kind == "layer"
            lines.append((
                e.name, e.rule, _fmt(e.relevance_in), _fmt(e.relevance_out),
                _fmt(e.lost) if is_layer else "", _fmt(e.stabilizer), _fmt(e.bias), "" if is_layer else _fmt(e.lost),
            ))
        widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h) for i, h in enumerate(header)]
        widths[1] = min(widths[1], 40)

        def row(cells: Sequence[str]) -> str:
            return "  ".join(
                c[: widths[i]].ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(cells)
            ).rstrip()

        out = [row(header), row(["-" * w for w in widths])]
        out += [row(r) for r in lines]
        out.append("")
        out.append(
            f"output {_fmt(self.output)} = input {_fmt(self.input)} + absorbed {_fmt(self.absorbed)} "
            f"+ leaked {_fmt(self.leaked)} (residual {self.residual:.2g})"
        )
        return "\n".join(out)

    def __repr__(self) -> str:
        return f"<Ledger {len(self.entries)} entries: output={self.output:.6g}, input={self.input:.6g}>"


def _rule_label(rule: Rule) -> str:
    params = rule.params()
    shown = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in params.items()
        if not (isinstance(v, (tuple, list)) and not v) and not isinstance(v, torch.Tensor)
    )
    return f"{rule.name}({shown})" if shown else str(rule.name)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


# -- the graph between the rule nodes ---------------------------------------------------------------
class _Region:
    def __init__(self) -> None:
        self.keys: list[Any] = []
        self.ops: list[Any] = []
        self.names: dict[int, str] = {}

    @property
    def sequence(self) -> int:
        return max(op._sequence_nr() for op in self.ops)

    def label(self) -> str:
        names: list[str] = []
        for op in sorted(self.ops, key=lambda o: o._sequence_nr()):
            name = self.names.get(id(op))
            if name is None:
                kind = type(op).__name__
                if kind == "AccumulateGrad":
                    continue
                name = kind.removesuffix("Backward0").removesuffix("Backward1").removesuffix("Backward").lower()
            if name not in names:
                names.append(name)
        shown = ", ".join(names[:3]) + (f" +{len(names) - 3} more" if len(names) > 3 else "")
        return shown or "parameters"


class _Graph:
    """Rule nodes and the regions of un-ruled operations between them."""

    def __init__(
        self, inputs: Sequence[torch.Tensor], output: torch.Tensor, module_names: dict[int, tuple[Any, str]]
    ) -> None:
        self.layers: list[Any] = []
        self._names = module_names
        self._parent: dict[Any, Any] = {}
        self._ops: dict[Any, Any] = {}
        self._inputs = {id(x): i for i, x in enumerate(inputs)}
        self._seen: set[int] = set()
        self._pending: list[Any] = []
        if output.grad_fn is not None:
            self._link(("top",), output.grad_fn, output.output_nr)
        stack = list(self._pending)
        self._pending.clear()
        while stack:
            node = stack.pop()
            for j, (child, idx) in enumerate(node.next_functions):
                if child is not None:
                    self._link(("edge", id(node), j), child, idx)
            stack.extend(self._pending)
            self._pending.clear()

    def _find(self, key: Any) -> Any:
        parent = self._parent.setdefault(key, key)
        if parent != key:
            parent = self._parent[key] = self._find(parent)
        return parent

    def _union(self, a: Any, b: Any) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[ra] = rb

    def _link(self, key: Any, node: Any, idx: int) -> None:
        """Join ``key`` (what feeds relevance into ``node``'s output ``idx``) with ``node``'s region."""
        stack = [(key, node, idx)]
        while stack:
            key, node, idx = stack.pop()
            if binding_of(node) is not None:
                self._union(key, ("out", id(node), idx))
                if id(node) not in self._seen:
                    self._seen.add(id(node))
                    self.layers.append(node)
                    self._pending.append(node)
                continue
            variable = getattr(node, "variable", None) if type(node).__name__ == "AccumulateGrad" else None
            if variable is not None and id(variable) in self._inputs:
                self._union(key, ("in", self._inputs[id(variable)]))
                continue
            op_key = ("op", id(node))
            self._union(key, op_key)
            if id(node) in self._seen:
                continue
            self._seen.add(id(node))
            self._ops[op_key] = node
            for child, child_idx in node.next_functions:
                if child is not None:
                    stack.append((op_key, child, child_idx))

    def regions(self) -> list[_Region]:
        groups: dict[Any, _Region] = {}
        for key in self._parent:
            region = groups.setdefault(self._find(key), _Region())
            if key in self._ops:
                region.ops.append(self._ops[key])
            else:
                region.keys.append(key)
        for region in groups.values():
            region.names = {
                id(op): self._names[id(op)][1] for op in region.ops if self._names.get(id(op), (None,))[0] is op
            }
        return list(groups.values())


__all__ = ("Ledger", "LedgerEntry")
