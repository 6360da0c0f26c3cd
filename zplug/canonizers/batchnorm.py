"""Merge BatchNorm into the linear layer (dense or convolution) that feeds it.

In evaluation mode a BatchNorm is the per-channel affine map ``y = s (x - mean) + beta`` with
``s = gamma / sqrt(var + eps)``. Folded into the preceding layer ``z = W x + b`` it gives one
layer with ``W' = s W`` (scaled per output channel) and ``b' = s (b - mean) + beta``, which LRP
rules can treat as a whole. zplug never writes the merged values into the model: rules see them
through :func:`zplug.engine.ops.override_params`, the layer's ``forward`` is replaced by one that
computes with them, and the BatchNorm's ``forward`` becomes the identity. On exit the model's
parameters, buffers and ``state_dict`` are bit-identical to before.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, ClassVar, NamedTuple

import attrs

from zplug._lazy import lazy_module
from zplug.canonizers._patch import PatchStack, patching
from zplug.canonizers.base import Canonizer, CanonizerError
from zplug.errors import NotTraceableError, SpecError
from zplug.parts import parameter

# Declaring the canonizer (to register or list it) needs no torch: it is imported on first use.
torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")
_ops = lazy_module("zplug.engine.ops")


class _Classes(NamedTuple):
    batchnorm: tuple[type, ...]
    conv: tuple[type, ...]
    conv_transpose: tuple[type, ...]
    #: The layers BatchNorm can be merged into (with their own, unmodified ``forward``).
    mergeable: tuple[type, ...]
    standard_forwards: frozenset


@functools.cache
def _classes() -> _Classes:
    nn = torch.nn
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    conv_t = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    mergeable = (nn.Linear, *conv, *conv_t)
    batchnorm = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    return _Classes(batchnorm, conv, conv_t, mergeable, frozenset(cls.forward for cls in mergeable))


def __getattr__(name: str) -> tuple[type, ...]:
    # BATCHNORM and MERGEABLE, the class tuples, are built (importing torch) when first asked for.
    if name == "BATCHNORM":
        return _classes().batchnorm
    if name == "MERGEABLE":
        return _classes().mergeable
    raise AttributeError(f"module '{__name__}' has no attribute '{name}'")


Pair = tuple[tuple[str, ...], str]


# -- the arithmetic ----------------------------------------------------------------------------
def _out_channels(module: torch.nn.Module) -> int:
    return module.out_features if isinstance(module, torch.nn.Linear) else module.out_channels


def batchnorm_affine(bn: torch.nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(scale, shift)`` with ``bn(x) == scale * x + shift`` per channel (evaluation mode)."""
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = bn.weight * scale
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
    return scale, shift


#: module -> (state stamp, merged parameters): merging again on every application costs ~10 ms on a ResNet50.
_merge_cache: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, dict[str, torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def _stamp(module: torch.nn.Module, bn: torch.nn.modules.batchnorm._BatchNorm) -> tuple:
    """The tensors the merged parameters depend on, with their in-place versions (kept alive, compared by identity)."""
    tensors = (module.weight, module.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    return (bn, bn.eps, *((t, t._version) if t is not None else (None, 0) for t in tensors))


def _same_stamp(a: tuple, b: tuple) -> bool:
    return a[0] is b[0] and a[1] == b[1] and all(x is y and u == v for (x, u), (y, v) in zip(a[2:], b[2:]))


def cached_merged_params(module: torch.nn.Module, bn: torch.nn.modules.batchnorm._BatchNorm) -> dict[str, torch.Tensor]:
    """:func:`merged_params`, reused while neither layer's tensors changed (same objects, same versions)."""
    stamp = _stamp(module, bn)
    hit = _merge_cache.get(module)
    if hit is not None and _same_stamp(hit[0], stamp):
        return hit[1]
    params = merged_params(module, bn)
    _merge_cache[module] = (stamp, params)
    return params


def merged_params(module: torch.nn.Module, bn: torch.nn.modules.batchnorm._BatchNorm) -> dict[str, torch.Tensor]:
    """Return ``{"weight", "bias"}`` of ``module`` followed by ``bn``, merged into one layer.

    The module's weight is scaled along its output channels: dimension 0 for ``Linear`` and
    convolutions; for transposed convolutions, whose weight has the shape
    ``(in, out / groups, *kernel)``, output channel ``g * out / groups + j`` is column ``j`` of
    group ``g``'s block of rows (Zennit scales dimension 1 as if ``groups == 1``).
    """
    with torch.no_grad():
        weight = module.weight
        denominator = (bn.running_var + bn.eps) ** 0.5
        scale = bn.weight / denominator if bn.weight is not None else 1 / denominator
        scale = scale.to(weight.dtype)
        if isinstance(module, _classes().conv_transpose):
            groups = module.groups
            blocks = weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])
            view = scale.reshape(groups, 1, weight.shape[1], *([1] * (weight.ndim - 2)))
            new_weight = (blocks * view).reshape(weight.shape)
        else:
            new_weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
        bias = module.bias if module.bias is not None else torch.zeros_like(scale)
        new_bias = (bias - bn.running_mean.to(weight.dtype)) * scale
        if bn.bias is not None:
            new_bias = new_bias + bn.bias.to(weight.dtype)
    return {"weight": new_weight, "bias": new_bias}


def _merged_forward(module: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> Callable[..., Any]:
    """A replacement ``forward`` computing ``module`` with the merged ``weight`` and ``bias``."""
    if isinstance(module, torch.nn.Linear):
        return lambda input: F.linear(input, weight, bias)
    if isinstance(module, _classes().conv):
        return lambda input: module._conv_forward(input, weight, bias)
    dims = len(module.kernel_size)
    conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[dims - 1]

    def forward(input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        padding = module._output_padding(
            input, output_size, module.stride, module.padding, module.kernel_size, dims, module.dilation
        )
        return conv_t(input, weight, bias, module.stride, module.padding, padding, module.groups, module.dilation)

    return forward


def _identity(input: torch.Tensor) -> torch.Tensor:
    # No copy: if an in-place operation later changes the tensor that the preceding layer's rule
    # stored as its output, the engine sees the changed version counter and recomputes the output.
    return input


@functools.cache
def _marked_identity() -> Callable[..., Any]:
    # A ``pass`` rule on the merged BatchNorm then costs nothing: the identity's gradient passes.
    # Marked on first use: importing the engine (and torch) is not needed to declare the canonizer.
    from zplug.engine.identity import mark_identity

    return mark_identity(_identity)


# -- checks ----------------------------------------------------------------------------------
def check_pair(modules: dict[str, torch.nn.Module], linears: Sequence[str], bn_name: str) -> None:
    """Raise :class:`CanonizerError` unless ``linears -> bn_name`` can be merged."""
    for name in (*linears, bn_name):
        if name not in modules:
            raise CanonizerError(f"merge_batchnorm: the model has no module '{name}'")
    bn = modules[bn_name]
    if not isinstance(bn, _classes().batchnorm):
        raise CanonizerError(f"merge_batchnorm: '{bn_name}' is a {type(bn).__name__}, not a BatchNorm")
    if bn.training or bn.running_mean is None or bn.running_var is None:
        why = "is in training mode" if bn.training else "keeps no running statistics (track_running_stats=False)"
        raise CanonizerError(
            f"merge_batchnorm: BatchNorm '{bn_name}' {why}; it normalises with the statistics of each batch, "
            "so it is no fixed affine map and cannot be merged into the layer before it. Call model.eval() first"
        )
    for name in linears:
        module = modules[name]
        if not isinstance(module, _classes().mergeable) or type(module).forward not in _classes().standard_forwards:
            raise CanonizerError(
                f"merge_batchnorm: '{name}' is a {type(module).__name__}; BatchNorm can be merged into Linear, "
                "Conv and ConvTranspose layers (with their own forward) only"
            )
        if _out_channels(module) != bn.num_features:
            raise CanonizerError(
                f"merge_batchnorm: '{name}' has {_out_channels(module)} output channels but BatchNorm '{bn_name}' "
                f"normalises {bn.num_features}"
            )


def _mergeable(module: torch.nn.Module) -> bool:
    # Not yet canonized, standard forward, parameters present.
    return (
        isinstance(module, _classes().mergeable)
        and type(module).forward in _classes().standard_forwards
        and "forward" not in module.__dict__
        and module.weight is not None
    )


def _mergeable_bn(module: torch.nn.Module) -> bool:
    return isinstance(module, _classes().batchnorm) and "forward" not in module.__dict__


# -- finding the pairs -------------------------------------------------------------------------
def traced_pairs(model: torch.nn.Module) -> list[Pair]:
    """Find ``(layer, BatchNorm)`` pairs from the data flow that ``torch.fx`` records.

    A pair is reported where a BatchNorm's input is the output of a Linear/Conv module call,
    both modules are called exactly once, and nothing else uses the layer's output (merging
    would otherwise change what the other consumers see). The order is execution order.

    Raises
    ------
    NotTraceableError
        If ``torch.fx`` cannot trace the model.
    """
    from zplug.canonizers._trace import trace

    graph = trace(model, "merge_batchnorm")
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs: list[Pair] = []
    for node in graph.nodes:
        if node.op != "call_module" or not _mergeable_bn(modules[node.target]) or not node.args:
            continue
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        layer = modules[source.target]
        if not _mergeable(layer) or _out_channels(layer) != modules[node.target].num_features:
            continue
        if len(source.users) == 1 and calls[source.target] == 1 and calls[node.target] == 1:
            pairs.append(((source.target,), node.target))
    return pairs


def sequential_pairs(model: torch.nn.Module) -> list[Pair]:
    """Find pairs of consecutive leaf modules ``(layer, BatchNorm)`` in registration order (as Zennit)."""
    leaves = [(n, m) for n, m in model.named_modules() if not m._modules]
    pairs: list[Pair] = []
    for (name, module), (bn_name, bn) in zip(leaves, leaves[1:]):
        if _mergeable(module) and _mergeable_bn(bn) and _out_channels(module) == bn.num_features:
            pairs.append(((name,), bn_name))
    return pairs


# -- applying ----------------------------------------------------------------------------------
@contextmanager
def merged(model: torch.nn.Module, pairs: Sequence[Pair]) -> Iterator[torch.nn.Module]:
    """Merge each BatchNorm of ``pairs`` into its layers for the duration of the ``with`` block."""
    modules = dict(model.named_modules())
    seen: dict[str, str] = {}
    for linears, bn_name in pairs:
        check_pair(modules, linears, bn_name)
        for name in linears:
            if name in seen:
                raise CanonizerError(
                    f"merge_batchnorm: layer '{name}' is paired with both '{seen[name]}' and '{bn_name}'; "
                    "a layer can absorb one BatchNorm only"
                )
            seen[name] = bn_name
    with ExitStack() as overrides, patching() as stack:
        for linears, bn_name in pairs:
            bn = modules[bn_name]
            for name in linears:
                _merge_one(stack, overrides, modules[name], bn)
            stack.attribute(bn, "forward", _marked_identity())
        yield model


def _merge_one(stack: PatchStack, overrides: ExitStack, module: torch.nn.Module, bn: torch.nn.Module) -> None:
    params = cached_merged_params(module, bn)
    overrides.enter_context(_ops.override_params(module, params))
    stack.attribute(module, "forward", _merged_forward(module, params["weight"], params["bias"]))


def _describe(model: torch.nn.Module, pairs: Sequence[Pair]) -> list[str]:
    modules = dict(model.named_modules())
    return [
        f"merge {type(modules[bn]).__name__} '{bn}' into "
        + ", ".join(f"{type(modules[n]).__name__} '{n}'" for n in linears)
        for linears, bn in pairs
        if bn in modules and all(n in modules for n in linears)
    ]


@attrs.frozen(kw_only=True)
class MergeBatchNorm(Canonizer):
    """Merge every BatchNorm into the Linear/Conv layer whose output it normalises.

    The pairs are found from the model's data flow, traced with ``torch.fx`` (no input
    needed, execution order, functional operations between the layers are seen). Models that
    fx cannot trace fall back to consecutive leaf modules in registration order, Zennit's
    ``SequentialMergeBatchNorm`` rule; :meth:`describe` says which was used. To state the
    pairs yourself, use ``merge_batchnorm_named``.
    """

    name: ClassVar[str] = "merge_batchnorm"
    summary: ClassVar[str] = "merge BatchNorm into the preceding Linear/Conv layer (pairs found by tracing)"
    covers: ClassVar[tuple[str, ...]] = ()

    def pairs(self, model: torch.nn.Module) -> tuple[list[Pair], str]:
        """Return the pairs to merge and how they were found (``"traced"`` or ``"registration order"``)."""
        try:
            return traced_pairs(model), "traced"
        except NotTraceableError:
            return sequential_pairs(model), "registration order"

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Merge the pairs found in ``model``; undo everything on exit."""
        with merged(model, self.pairs(model)[0]):
            yield model

    def describe(self, model: torch.nn.Module) -> list[str]:
        """One line per merged pair."""
        pairs, how = self.pairs(model)
        lines = _describe(model, pairs)
        if how != "traced":
            lines.insert(0, "torch.fx cannot trace the model: pairs are consecutive layers in registration order")
        return lines


def _to_pairs(value: Any) -> Any:
    if not isinstance(value, (list, tuple)):
        return value
    out = []
    for item in value:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            linears, bn = item
            if isinstance(linears, str):
                linears = (linears,)
            elif isinstance(linears, list):
                linears = tuple(linears)
            out.append((linears, bn))
        else:
            out.append(item)
    return tuple(out)


def _check_pairs(name: str, value: Any) -> None:
    example = '[[["features.0"], "features.1"], ...]'
    if not isinstance(value, tuple):
        raise SpecError(f"parameter '{name}' must be a list of [[layer names], batchnorm name] pairs, e.g. {example}")
    for index, item in enumerate(value):
        ok = (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], tuple)
            and len(item[0]) > 0
            and all(isinstance(n, str) for n in item[0])
            and isinstance(item[1], str)
        )
        if not ok:
            raise SpecError(
                f"parameter '{name}': item {index} must be [[layer names], batchnorm name], e.g. {example} "
                f"(got {item!r})"
            )


@attrs.frozen(kw_only=True)
class NamedMergeBatchNorm(Canonizer):
    """Merge BatchNorms into layers named explicitly (Zennit's ``NamedMergeBatchNorm``).

    Parameters
    ----------
    pairs : list
        ``[[["features.0"], "features.1"], ...]``: each item lists the layers and the BatchNorm
        merged into each of them (several layers may share a BatchNorm, e.g. parallel branches).
    """

    name: ClassVar[str] = "merge_batchnorm_named"
    summary: ClassVar[str] = "merge BatchNorm into explicitly named layers"
    pairs: tuple[Pair, ...] = parameter(
        doc='[[layer names], batchnorm name] pairs, e.g. [[["features.0"], "features.1"]]',
        kind="list of pairs",
        check=_check_pairs,
        converter=_to_pairs,
    )

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Merge the named pairs; undo everything on exit."""
        with merged(model, self.pairs):
            yield model

    def describe(self, model: torch.nn.Module) -> list[str]:
        """One line per merged pair."""
        return _describe(model, self.pairs)


__all__ = (  # and BATCHNORM, MERGEABLE: the class tuples, built on first access (module __getattr__)
    "MergeBatchNorm",
    "NamedMergeBatchNorm",
    "batchnorm_affine",
    "check_pair",
    "merged",
    "merged_params",
    "sequential_pairs",
    "traced_pairs",
)
