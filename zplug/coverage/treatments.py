"""How the coverage analysis judges an operation that no rule covers.

An operation on the path from the input to the output either belongs to a module with a rule
(the rule covers it) or keeps its plain gradient. The plain gradient is right for LRP only where it
equals what LRP-0 would do: where every output element is a copy of one input element, or a
constant (reshapes, permutes, concatenation, indexing, padding, max-pooling and ReLU masks, the
addition of a constant). Such operations are *linear*; every other operation without a rule is
*not covered* (a product, a sum of two tensors, a scaling, softmax, a normalisation, ...).

The table of linear operations is registered through the hook ``zplug_register_op_treatments``
(zplug's own entries below, a plugin's next to them); :func:`classify` applies it. This module
imports neither torch nor ``torch.fx``: the registry loads it for every command, so module classes
are named by their dotted paths (``"torch.nn.Dropout"``) and matched against a module's class.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from zplug._lazy import lazy_module
from zplug.hookspecs import hookimpl

torch = lazy_module("torch")  # for autograd Function keys, once a table is built


@attrs.frozen
class Treatment:
    """What an operation without a rule gets.

    Attributes
    ----------
    covered : bool
        Whether the plain gradient is the right relevance propagation there.
    summary : str
        How it is treated, in a few words (shown in the coverage section).
    """

    covered: bool
    summary: str


#: The plain gradient copies input elements (or constants): exactly what LRP-0 does there.
LINEAR = Treatment(covered=True, summary="linear: the plain gradient is exact")
#: The plain gradient passes all relevance to the tensor, none to the constant.
SHIFT = Treatment(covered=True, summary="linear: add of a constant, the plain gradient is exact")
#: No rule and no reason to trust the plain gradient.
UNCOVERED = Treatment(covered=False, summary="no rule")

#: The short forms a plugin may use instead of a :class:`Treatment`.
NAMED = {"linear": LINEAR, "not covered": UNCOVERED}

# Operations whose output elements are copies of input elements or constants (names as torch.fx
# records them and as the autograd graph names its nodes, see :func:`op_name`).
ROUTING_OPS = frozenset("""
    view view_as reshape reshape_as unsafe_view reshape_alias alias flatten unflatten ravel
    permute transpose swapaxes swapdims movedim moveaxis t numpy_t mt contiguous clone expand expand_as
    broadcast_to repeat tile repeat_interleave squeeze unsqueeze
    cat concat concatenate stack hstack vstack dstack
    getitem select slice narrow index index_select gather take_along_dim masked_select diagonal tril triu
    split split_with_sizes unsafe_split chunk unbind tensor_split
    roll flip fliplr flipud rot90 pad constant_pad_nd reflection_pad1d reflection_pad2d reflection_pad3d
    replication_pad1d replication_pad2d replication_pad3d
    dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout identity
    to to_copy type type_as float double half bfloat16 cpu cuda
    relu relu6 hardtanh threshold clamp clip clamp_min clamp_max
    max min maximum minimum amax amin sort topk
    max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices
    adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
    adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices adaptive_max_pool3d_with_indices
    where masked_fill index_put pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle
    upsample_nearest1d upsample_nearest2d upsample_nearest3d unfold im2col as_strided
""".split())

#: Module classes whose plain gradient is exact (kept in a model without a rule), by dotted path.
ROUTING_MODULES: tuple[str, ...] = tuple(
    f"torch.nn.{name}"
    for name in """
        Identity Flatten Unflatten Dropout Dropout1d Dropout2d Dropout3d AlphaDropout FeatureAlphaDropout
        ReLU ReLU6 Hardtanh Threshold MaxPool1d MaxPool2d MaxPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d
        AdaptiveMaxPool3d ZeroPad1d ZeroPad2d ZeroPad3d ConstantPad1d ConstantPad2d ConstantPad3d
        ReflectionPad1d ReflectionPad2d ReflectionPad3d ReplicationPad1d ReplicationPad2d ReplicationPad3d
        CircularPad1d CircularPad2d CircularPad3d PixelShuffle PixelUnshuffle ChannelShuffle UpsamplingNearest2d
    """.split()
)

#: Operations that give no gradient (shapes, comparisons, integer results): they end the
#: differentiable path, so what they feed is not on it.
CUTTING_OPS = frozenset("""
    size dim numel item tolist stride len getattr detach argmax argmin argsort eq ne lt le gt ge
    logical_and logical_or logical_not logical_xor isnan isinf isfinite sign floor ceil round trunc
    zeros_like ones_like empty_like full_like rand_like randn_like randint_like
    new_zeros new_ones new_empty new_full new_tensor long int bool short byte char nonzero
    bucketize searchsorted floordiv
""".split())

#: Attributes of a tensor that are tensors (``x.T``); every other attribute (shape, device) is not.
TENSOR_ATTRIBUTES = {"T": "t", "mT": "mt", "H": "t", "mH": "mt", "real": "view"}

#: Additions: linear when one operand is a constant, not covered for two tensors (copies relevance).
SHIFT_OPS = frozenset({"add", "sub", "rsub"})

#: Where the output of a layer counts as rectified (nothing below zero reaches the next layer).
RECTIFIERS = frozenset({"relu", "relu6"})
RECTIFIER_MODULES: tuple[str, ...] = ("torch.nn.ReLU", "torch.nn.ReLU6")


def class_paths(module: Any) -> tuple[str, ...]:
    """The dotted paths of ``module``'s class and its bases (``"torch.nn.modules.activation.ReLU"`` ...).

    A class is also known by its package's public path (``torch.nn.ReLU``), so both spellings of
    every class in the method resolution order are given.
    """
    return _paths_of(type(module))


@functools.cache
def _paths_of(cls: type) -> tuple[str, ...]:
    paths = []
    for base in cls.__mro__:
        paths.append(f"{base.__module__}.{base.__qualname__}")
        paths.extend(_public_paths(base))
    return tuple(paths)


def _public_paths(cls: type) -> Iterable[str]:
    parts = cls.__module__.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # torch.nn.modules.activation -> torch.nn.modules -> torch.nn
        package = sys.modules.get(".".join(parts[:cut]))
        if package is not None and getattr(package, cls.__qualname__, None) is cls:
            yield f"{package.__name__}.{cls.__qualname__}"

_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z0-9])(?=[A-Z][a-z])")
_BACKWARD = re.compile(r"Backward\d*$")
_ALIASES = {"iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "div", "truediv": "div", "imatmul": "matmul",
            "concat": "cat", "native_layer_norm": "layer_norm", "native_batch_norm": "batch_norm",
            "mm": "matmul", "bmm": "matmul"}


def op_name(raw: str) -> str:
    """A readable, uniform name for a torch.fx target or an autograd node class.

    ``"__add__"``, ``"add_"`` and ``operator.iadd``'s ``"iadd"`` become ``"add"``;
    ``"NativeLayerNormBackward0"`` becomes ``"layer_norm"``, ``"MaxPool2DWithIndicesBackward0"``
    becomes ``"max_pool2d_with_indices"``.
    """
    name = raw
    if _BACKWARD.search(name):
        name = _CAMEL.sub("_", _BACKWARD.sub("", name)).lower()
    name = name.strip("_")
    if name.startswith("scaled_dot_product_") and name.endswith(("attention", "attention_for_cpu")):
        return "scaled_dot_product_attention"  # the kernel's name depends on the device
    return _ALIASES.get(name, name)


@hookimpl
def zplug_register_op_treatments():
    """Register the operations and module classes whose plain gradient is exact (see the module docstring)."""
    table: dict[Any, str] = dict.fromkeys(sorted(ROUTING_OPS), "linear")
    table.update(dict.fromkeys(ROUTING_MODULES, "linear"))
    return table


def as_treatment(value: Any, where: str) -> Treatment:
    """Turn a declared value (``"linear"``, ``"not covered"`` or a :class:`Treatment`) into a Treatment.

    Raises
    ------
    TypeError
        For any other value (the registry reports the plugin as broken).
    """
    if isinstance(value, Treatment):
        return value
    if isinstance(value, str) and value in NAMED:
        return NAMED[value]
    raise TypeError(
        f"{where}: a treatment is 'linear', 'not covered' or a zplug.coverage.Treatment (got {value!r})"
    )


def check_key(key: Any) -> Any:
    """Check a key of the treatment table.

    A key is an operation name, a function, a module or ``torch.autograd.Function`` class, or a
    module class's dotted path (a string with a dot).
    """
    if isinstance(key, str):
        if not key:
            raise TypeError("an operation name must not be empty")
        return key if "." in key else op_name(key)
    if isinstance(key, type) or callable(key):
        return key
    raise TypeError(f"a treatment key is an operation name, a function or a class (got {key!r})")


class TreatmentTable:
    """The merged declarations of all plugins, split by kind of key.

    Parameters
    ----------
    declarations : mapping
        ``{key: Treatment}``: operation names, functions (torch.fx call targets), module classes
        or their dotted paths (unruled calls of them are judged as one operation) and
        ``torch.autograd.Function`` classes (their autograd nodes are judged as one operation).
    """

    def __init__(self, declarations: Mapping[Any, Treatment]) -> None:
        self.names: dict[str, Treatment] = {}
        self.functions: dict[Any, Treatment] = {}
        self.modules: dict[str, Treatment] = {}  # by class path: declaring a class imports nothing
        for key, treatment in declarations.items():
            if isinstance(key, str) and "." in key:
                self.modules[key] = treatment
            elif isinstance(key, str):
                self.names[key] = treatment
            elif isinstance(key, type) and issubclass(key, torch.nn.Module):
                self.modules[f"{key.__module__}.{key.__qualname__}"] = treatment
            elif isinstance(key, type) and issubclass(key, torch.autograd.Function):
                self.names[op_name(f"{key.__name__}Backward")] = treatment
            else:
                self.functions[key] = treatment

    def module(self, module: Any) -> Treatment | None:
        """The declared treatment of an unruled call of ``module`` (by its class or a base), or ``None``."""
        for path in class_paths(module):
            if path in self.modules:
                return self.modules[path]
        return None

    def classify(self, name: str, operands: int, target: Any = None) -> Treatment:
        """Judge the operation ``name`` with ``operands`` inputs on the differentiable path (see :func:`classify`)."""
        return classify(self, name, operands, target)


def classify(table: TreatmentTable, name: str, operands: int, target: Any = None) -> Treatment:
    """Judge an operation without a rule.

    Parameters
    ----------
    table : TreatmentTable
        The declared treatments.
    name : str
        The operation's name (:func:`op_name`).
    operands : int
        How many of its inputs are on the differentiable path from the model input (the rest are
        constants: parameters, buffers, numbers).
    target : callable or None
        The torch.fx call target, matched against declared functions first.
    """
    try:
        declared = table.functions.get(target) if target is not None else None
    except TypeError:  # an unhashable target
        declared = None
    if declared is not None:
        return declared
    if name in table.names:
        return table.names[name]
    if name in SHIFT_OPS:
        return SHIFT if operands < 2 else UNCOVERED
    return UNCOVERED


def table_from(declarations: Iterable[tuple[Any, Any, str]]) -> TreatmentTable:
    """Build a :class:`TreatmentTable` from ``(key, value, plugin)`` triples (for tests and the registry)."""
    return TreatmentTable({check_key(k): as_treatment(v, f"plugin '{p}', {k!r}") for k, v, p in declarations})


def describe_callable(target: Callable[..., Any] | str) -> str:
    """The name of a torch.fx call target (a function or a method name)."""
    if isinstance(target, str):
        return target
    return getattr(target, "__name__", type(target).__name__)


__all__ = (
    "CUTTING_OPS",
    "LINEAR",
    "RECTIFIERS",
    "RECTIFIER_MODULES",
    "ROUTING_MODULES",
    "ROUTING_OPS",
    "SHIFT",
    "SHIFT_OPS",
    "TENSOR_ATTRIBUTES",
    "UNCOVERED",
    "Treatment",
    "TreatmentTable",
    "as_treatment",
    "check_key",
    "class_paths",
    "classify",
    "op_name",
    "table_from",
)
