"""The work behind :mod:`zplug.canonizers.attention`: the rewritten attention and the fx rewriting.

Imported when a transformer canonizer is first applied or described (it needs torch and torch.fx);
declaring the canonizers imports nothing of it.
"""

from __future__ import annotations

import operator
import weakref
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F  # noqa: N812

from zplug.canonizers._pooling import mean_module, pooling_module
from zplug.canonizers.residual import _is_tensor_addition, _mutates_shared, _non_tensor
from zplug.canonizers.rewrite import Rewrite
from zplug.errors import CanonizerError
from zplug.layers import MatMul, Mul, ScaledDotProductAttention, Sum
from zplug.layertypes import ACTIVATION as _ACTIVATION_PATHS
from zplug.preset.classes import import_class


# -- multihead_attention ---------------------------------------------------------------------------
def _alias_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    """A ``Linear`` whose parameters share storage with ``weight``/``bias`` (views, nothing copied).

    Made without ``Linear.__init__``, which would initialise parameters only to replace them (tens of
    microseconds each, in every application of the canonizer).
    """
    layer = torch.nn.Linear.__new__(torch.nn.Linear)
    torch.nn.Module.__init__(layer)
    layer.in_features, layer.out_features = weight.shape[1], weight.shape[0]
    layer.weight = torch.nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)
    bias = None if bias is None else torch.nn.Parameter(bias.detach(), requires_grad=bias.requires_grad)
    layer.register_parameter("bias", bias)
    return layer


def _projections(mha: torch.nn.MultiheadAttention) -> dict[str, torch.nn.Linear]:
    e = mha.embed_dim
    bias = mha.in_proj_bias
    biases = (None, None, None) if bias is None else (bias[:e], bias[e : 2 * e], bias[2 * e :])
    if mha._qkv_same_embed_dim:
        w = mha.in_proj_weight
        weights = (w[:e], w[e : 2 * e], w[2 * e :])
    else:
        weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    return {name: _alias_linear(w, b) for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weights, biases)}


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """MultiheadAttention's mask convention (bool: True = blocked) as an additive float mask."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def _mha_forward(
    self: torch.nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``MultiheadAttention.forward`` with projections, scores, softmax and context as modules."""
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint (as torch.nn.MultiheadAttention)")
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    elif not self.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    n, length, source = query.shape[0], query.shape[1], key.shape[1]
    heads, size = self.num_heads, self.head_dim

    def split(x: torch.Tensor, count: int) -> torch.Tensor:
        return x.reshape(n, count, heads, size).transpose(1, 2)

    q = split(self.q_proj(query), length)
    k = split(self.k_proj(key), source)
    v = split(self.v_proj(value), source)
    mask = _additive(attn_mask, q.dtype)
    if mask is not None and mask.dim() == 3:  # (N * heads, L, S)
        mask = mask.reshape(n, heads, length, source)
    padding = _additive(key_padding_mask, q.dtype)
    if padding is not None:
        padding = padding.reshape(n, 1, 1, source)
        mask = padding if mask is None else mask + padding
    dropout = self.dropout if self.training else 0.0
    if need_weights:
        out, weights = self.attention.attend(q, k, v, mask, dropout)
    else:  # through the module's call, so that a rule on the whole attention (recompute) applies
        out, weights = self.attention(q, k, v, mask, dropout), None
    out = self.out_proj(out.transpose(1, 2).reshape(n, length, self.embed_dim))
    if batched and not self.batch_first:
        out = out.transpose(0, 1)
    elif not batched:
        out = out.squeeze(0)
    if not need_weights:
        return out, None
    if average_attn_weights:
        weights = weights.mean(dim=1)
    return out, weights.squeeze(0) if not batched else weights


def multihead_attention_rewrites(model: torch.nn.Module, canonizer: str) -> list[Rewrite]:
    """One rewrite per ``MultiheadAttention`` (exact class forward)."""
    plan = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.MultiheadAttention) or "forward" in module.__dict__:
            continue
        if type(module).forward is not torch.nn.MultiheadAttention.forward:
            continue
        if module.bias_k is not None or module.add_zero_attn:
            raise CanonizerError(
                f"{canonizer}: module '{name}' uses add_bias_kv or add_zero_attn, which the rewrite does not "
                "reproduce; leave this canonizer out for this model"
            )
        children: dict[str, torch.nn.Module] = {**_projections(module), "attention": ScaledDotProductAttention()}
        plan.append(Rewrite(
            name=name, module=module, forward=_mha_forward.__get__(module, type(module)), children=children,
            what="q_proj, k_proj, v_proj, attention (scores, softmax, context) and out_proj as modules",
        ))
    return plan


# -- functional_ops --------------------------------------------------------------------------------
#: Everything ``functional_ops`` routes: additions, pooling and means, attention operations and products.
KINDS = frozenset({"sum", "pool", "attention"})


class _OwnForwardTracer(torch.fx.Tracer):
    """Traces one module's own forward: every child module is a leaf."""

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        return True


def _trace_own(module: torch.nn.Module) -> tuple[torch.fx.Graph, dict[str, Any]]:
    """Trace ``module``'s own forward; return the graph and the tensor constants fx recorded.

    fx stores tensors created in the forward as attributes ``_tensor_constant<N>`` of the traced
    module; they are taken off the module again (it must come back as it was) and returned.
    A module whose forward an earlier fx rewrite replaced is not traced again: the rewritten
    graph is continued, so that rewrites compose (``residual_sum``, then ``functional_pooling``).
    Results are cached while the module's children and forward are unchanged.
    """
    earlier = getattr(module.__dict__.get("forward"), "rewrite", None)
    if earlier is not None and earlier.graph is not None:
        return earlier.graph, dict(earlier.constants)
    signature = tuple((name, id(child)) for name, child in module.named_children())
    cached = _traced.get(module)
    if cached is not None and cached[0] == signature:
        return cached[1], dict(cached[2])
    before = set(module.__dict__)
    try:
        graph = _OwnForwardTracer().trace(module)
    finally:
        added = {key: module.__dict__.pop(key) for key in set(module.__dict__) - before}
    _traced[module] = (signature, graph, added)
    return graph, dict(added)


_traced: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_MATMUL_FUNCTIONS = (torch.matmul, operator.matmul, torch.bmm)
_MATMUL_METHODS = ("matmul", "bmm", "__matmul__")
_SOFTMAX_FUNCTIONS = (F.softmax, torch.softmax)
_MUL_FUNCTIONS = (operator.mul, torch.mul)
_MUL_METHODS = ("mul", "__mul__", "__rmul__")
_DIV_FUNCTIONS = (operator.truediv, torch.div, torch.true_divide)
_DIV_METHODS = ("div", "__truediv__", "true_divide")
#: Operations between a softmax and the product that uses it that do not change the role of a tensor.
_THROUGH_METHODS = ("to", "type", "float", "half", "double", "bfloat16", "contiguous", "clone")
_ACTIVATION_FUNCTIONS = (torch.sigmoid, F.sigmoid, F.silu, F.gelu, torch.tanh, F.tanh, F.relu, torch.relu, F.mish)
_ACTIVATION_METHODS = ("sigmoid", "tanh", "relu")


_ARITHMETIC = (operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow,
               operator.neg)


def _is_number(value: Any) -> bool:
    """A number, or a node that computes one from shapes and numbers (``math.sqrt(q.shape[-1])``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    if not isinstance(value, torch.fx.Node):
        return False
    if value.op == "placeholder":  # an argument annotated as a number (``p: int``)
        return value.type in (int, float)
    if value.op == "call_function" and (getattr(value.target, "__module__", None) == "math"
                                        or value.target in _ARITHMETIC):
        return all(_is_number(a) or _non_tensor(a) for a in value.args) and not value.kwargs
    return False


def _tensor_node(value: Any) -> bool:
    return isinstance(value, torch.fx.Node) and not _non_tensor(value) and not _is_number(value)


def _is_call(node: torch.fx.Node, functions: tuple, methods: tuple) -> bool:
    return (node.op == "call_function" and node.target in functions) or (
        node.op == "call_method" and node.target in methods
    )


def _is_matmul(node: torch.fx.Node) -> bool:
    return _is_call(node, _MATMUL_FUNCTIONS, _MATMUL_METHODS) and len(node.args) == 2 and not node.kwargs and all(
        _tensor_node(a) for a in node.args
    )


def _softmax_dim(node: torch.fx.Node) -> tuple[int, Any] | None:
    """``(dim, dtype)`` of a functional softmax call, or ``None`` if ``node`` is not one we can route."""
    if not _is_call(node, _SOFTMAX_FUNCTIONS, ("softmax",)) or not node.args or not _tensor_node(node.args[0]):
        return None
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    extra = {k for k in node.kwargs if k not in ("dim", "dtype", "_stacklevel")}
    if not isinstance(dim, int) or extra or len(node.args) > 3:
        return None
    dtype = node.args[2] if len(node.args) > 2 else node.kwargs.get("dtype")
    return dim, dtype


def _is_product(node: torch.fx.Node) -> bool:
    """``a * b`` with tensors and numbers (at least one tensor), or ``a / number``."""
    if node.kwargs or len(node.args) != 2:
        return False
    a, b = node.args
    operands_ok = all(_tensor_node(x) or _is_number(x) for x in (a, b)) and (_tensor_node(a) or _tensor_node(b))
    if _is_call(node, _MUL_FUNCTIONS, _MUL_METHODS):
        return operands_ok
    if _is_call(node, _DIV_FUNCTIONS, _DIV_METHODS):
        return _tensor_node(a) and _is_number(b) and not (isinstance(b, (int, float)) and b == 0)
    return False


def _source(node: Any, modules: dict[str, torch.nn.Module]) -> Any:
    """Follow ``node`` back through dropout and dtype or layout copies to the operation that made it."""
    while isinstance(node, torch.fx.Node):
        through = (
            (node.op == "call_method" and node.target in _THROUGH_METHODS)
            or (node.op == "call_function" and node.target is F.dropout)
            or (node.op == "call_module" and isinstance(modules.get(node.target), torch.nn.Dropout))
        )
        if not through or not node.args:
            return node
        node = node.args[0]
    return node


#: The activation modules (zplug's ``activation`` layer type), as classes.
ACTIVATION = tuple(import_class(path) for path in _ACTIVATION_PATHS)


def _is_activation(node: Any, modules: dict[str, torch.nn.Module]) -> bool:
    if not isinstance(node, torch.fx.Node):
        return False
    if node.op == "call_module":
        return isinstance(modules.get(node.target), ACTIVATION)
    return _is_call(node, _ACTIVATION_FUNCTIONS, _ACTIVATION_METHODS)


class _Builder:
    """Rewrites one module's traced graph, collecting the new children."""

    def __init__(
        self, module: torch.nn.Module, graph: torch.fx.Graph, kinds: frozenset[str] = KINDS,
        names: dict[str, str] | None = None,
    ) -> None:
        self.module = module
        self.kinds = kinds
        self.names = names or {}
        self.graph = torch.fx.Graph()
        self.mapping: dict[torch.fx.Node, torch.fx.Node] = {}
        self.graph.output(self.graph.graph_copy(graph, self.mapping))
        self.children: dict[str, torch.nn.Module] = {}
        self.modules = dict(module.named_children())
        self.softmax_nodes: set[torch.fx.Node] = {
            n for n in self.graph.nodes
            if n.op == "call_module" and isinstance(self.modules.get(n.target), torch.nn.Softmax)
        }
        self.counts: dict[str, int] = {}

    def _child(self, base: str, child: torch.nn.Module) -> str:
        base = self.names.get(base, base)
        name, index = base, 0
        while hasattr(self.module, name) or name in self.children:
            index += 1
            name = f"{base}_{index}"
        self.children[name] = child
        self.modules[name] = child
        self.counts[base] = self.counts.get(base, 0) + 1
        return name

    def _replace(self, node: torch.fx.Node, base: str, child: torch.nn.Module, args: tuple, kwargs=None):
        target = self._child(base, child)
        with self.graph.inserting_before(node):
            call = self.graph.call_module(target, args, kwargs or {})
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        self.graph.erase_node(node)
        return call

    def rewrite(self) -> bool:
        kinds = self.kinds
        for node in list(self.graph.nodes):
            if "sum" in kinds and _is_tensor_addition(node) and not _mutates_shared(node):
                self._replace(node, "sum", Sum(), tuple(node.args))
            elif "pool" in kinds and (pool := pooling_module(node)) is not None:
                self._replace(node, "pool", pool, (node.args[0],))
            elif "pool" in kinds and (mean := mean_module(node)) is not None:
                self._replace(node, "mean", mean, (node.args[0],))
            elif "attention" not in kinds:
                continue
            elif (softmax := _softmax_dim(node)) is not None:
                dim, dtype = softmax
                x = node.args[0]
                if dtype is not None:
                    with self.graph.inserting_before(node):
                        x = self.graph.call_method("to", (x, dtype))
                self.softmax_nodes.add(self._replace(node, "softmax", torch.nn.Softmax(dim=dim), (x,)))
            elif _is_matmul(node):
                first = _source(node.args[0], self.modules)
                value = 1 if first in self.softmax_nodes else None
                self._replace(node, "matmul", MatMul(value=value), tuple(node.args))
            elif node.op == "call_function" and node.target is F.scaled_dot_product_attention:
                self._replace(node, "attention", ScaledDotProductAttention(), tuple(node.args), dict(node.kwargs))
            elif _is_product(node):
                a, b = node.args
                if _is_call(node, _DIV_FUNCTIONS, _DIV_METHODS):
                    if isinstance(b, torch.fx.Node):
                        with self.graph.inserting_before(node):
                            b = self.graph.call_function(operator.truediv, (1.0, b))
                    else:
                        b = 1.0 / b
                value = None
                if _tensor_node(a) and _tensor_node(b):
                    gates = [_is_activation(_source(x, self.modules), self.modules) for x in (a, b)]
                    value = {(True, False): 1, (False, True): 0}.get(tuple(gates))
                self._replace(node, "mul", Mul(value=value), (a, b))
        return bool(self.children)

    def summary(self) -> str:
        return ", ".join(f"{count} {base}" for base, count in self.counts.items()) + " as modules"

    def additions(self) -> list[str]:
        """``add = a + b`` for each addition :meth:`rewrite` would route (before it runs)."""
        return [
            f"{n.name} = {' + '.join(str(a) for a in n.args)}"
            for n in self.graph.nodes if _is_tensor_addition(n) and not _mutates_shared(n)
        ]


def _rewritten_by_fx(module: torch.nn.Module) -> bool:
    """True if ``module``'s forward is an earlier fx rewrite's (which later rewrites continue)."""
    rewrite = getattr(module.__dict__.get("forward"), "rewrite", None)
    return rewrite is not None and getattr(rewrite, "graph", None) is not None


def _candidates(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    out = []
    for name, module in model.named_modules():
        cls = type(module)
        if cls.__module__.startswith("torch.nn") or cls.__module__ in ("zplug.layers", "zplug.functional_layers"):
            continue
        if "forward" in module.__dict__ and not _rewritten_by_fx(module):
            continue
        out.append((name, module))
    return out


def functional_rewrites(
    model: torch.nn.Module, kinds: frozenset[str] = KINDS, names: dict[str, str] | None = None,
) -> tuple[list[Rewrite], list[str]]:
    """The rewrites of ``model`` that route the operations of ``kinds``, and the modules that could not be traced.

    ``kinds`` holds ``"sum"`` (additions of two tensors), ``"pool"`` (functional pooling, means)
    and ``"attention"`` (matmul, softmax, scaled dot-product attention, products); ``names``
    renames the children (``{"sum": "residual_sum"}``).
    """
    plan, untraceable = [], []
    for name, module in _candidates(model):
        try:
            graph, constants = _trace_own(module)
        except Exception as exc:  # fx raises many kinds of errors; all mean "cannot trace"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            untraceable.append(f"{name or '<model>'} ({type(module).__name__}): not traceable ({first[:120]})")
            continue
        built = _build(module, graph, constants, kinds, names)
        if built is None:
            continue
        forward, children, what, new_graph, found = built
        plan.append(Rewrite(name=name, module=module, forward=forward, children=children, what=what,
                            graph=new_graph, constants=constants, additions=found if "sum" in kinds else ()))
    return plan, untraceable


def _build(
    module: torch.nn.Module, graph: torch.fx.Graph, constants: dict[str, Any], kinds: frozenset[str],
    names: dict[str, str] | None,
) -> tuple | None:
    """``(forward, children, what, graph, additions)`` of ``module``'s rewrite of ``graph``, or None if none.

    Building the rewritten ``GraphModule`` (code generation and compilation) costs milliseconds per module,
    which every application of the canonizer would pay again: the result is kept while everything it
    depends on is the same (the traced graph object, the kinds and names, the module's attribute names, and
    the objects its graph refers to). The new children are stateless modules, added only while applied.
    """
    key = (
        kinds,
        tuple(sorted((names or {}).items())),
        tuple(module.__dict__),
        *(tuple(getattr(module, slot)) for slot in ("_modules", "_parameters", "_buffers")),
        tuple((target, id(obj)) for target, obj in _attributes(module, graph).items()),
        tuple((key, id(value)) for key, value in constants.items()),
    )
    cached = _built.get(module)
    if cached is not None and cached[0] is graph and cached[1] == key:
        return cached[2]
    builder = _Builder(module, graph, kinds, names)
    found = tuple(builder.additions())
    result = None
    if builder.rewrite():
        builder.graph.lint()
        root = {**_attributes(module, builder.graph), **constants, **builder.children}
        compiled = torch.fx.GraphModule(root, builder.graph, class_name=f"{type(module).__name__}Functional")
        result = (compiled.forward, builder.children, builder.summary(), builder.graph, found)
    _built[module] = (graph, key, result)
    return result


_built: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _attributes(module: torch.nn.Module, graph: torch.fx.Graph) -> dict[str, Any]:
    """The module's attributes that ``graph`` refers to (children, parameters, buffers), by qualified name."""
    found = {}
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr") and isinstance(node.target, str):
            obj: Any = module
            try:
                for part in node.target.split("."):
                    obj = getattr(obj, part)
            except AttributeError:
                continue  # one of the new children
            found[node.target] = obj
    return found


def has_attention(model: torch.nn.Module) -> list[str]:
    """Names of modules (and functional operations) that make ``model`` a transformer, for suggestions."""
    found = [name for name, m in model.named_modules() if isinstance(m, torch.nn.MultiheadAttention)]
    for name, module in _candidates(model):
        try:
            graph, _ = _trace_own(module)
        except Exception:  # noqa: BLE001 -- untraceable modules are simply not suggested for
            continue
        if any(_attention_like(n) for n in graph.nodes):
            found.append(name or "<model>")
    return found


def _attention_like(node: torch.fx.Node) -> bool:
    """Softmax, scaled dot-product attention, or a matrix product of two activations (not ``x @ weight``)."""
    if _softmax_dim(node) is not None or node.target is F.scaled_dot_product_attention:
        return True
    return _is_matmul(node) and not any(a.op == "get_attr" for a in node.args)


__all__ = ("KINDS", "functional_rewrites", "has_attention", "multihead_attention_rewrites")
