"""The operator view of a layer: its forward with given parameters, and the transpose.

LRP rules for layers that are linear in their input (dense, convolution, transposed
convolution, pooling, sums) need two things: the layer's output for modified inputs and
parameters, and the vector-Jacobian product with respect to the input. For the common
torch layers both are computed with explicit kernels (no autograd re-run); any other
module falls back to ``torch.func.functional_call`` plus autograd.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from zplug.layers import Sum

Params = dict[str, torch.Tensor | None]

_guard = threading.local()
_param_overrides: weakref.WeakKeyDictionary[torch.nn.Module, Mapping[str, torch.Tensor | None]] = (
    weakref.WeakKeyDictionary()
)


def inside_rule() -> bool:
    """Return True while a rule computes relevance (patched forwards then run unmodified)."""
    return getattr(_guard, "depth", 0) > 0


class _RuleComputation:
    """Context manager marking the thread as computing relevance (a class: cheaper than a generator)."""

    __slots__ = ()

    def __enter__(self) -> None:
        _guard.depth = getattr(_guard, "depth", 0) + 1

    def __exit__(self, *exc_info: object) -> None:
        _guard.depth -= 1


_RULE_COMPUTATION = _RuleComputation()


def rule_computation() -> _RuleComputation:
    """Mark the current thread as computing relevance (see :func:`inside_rule`); use as ``with``."""
    return _RULE_COMPUTATION


@contextmanager
def rules_applying() -> Iterator[None]:
    """Let patched forwards apply their rules again inside a rule's computation; use as ``with``.

    A rule that re-runs a module's forward to have the rules of the modules inside it compute
    relevance (``recompute``) runs that forward in this block.
    """
    depth = getattr(_guard, "depth", 0)
    _guard.depth = 0
    try:
        yield
    finally:
        _guard.depth = depth


@contextmanager
def override_params(module: torch.nn.Module, params: Mapping[str, torch.Tensor | None]) -> Iterator[None]:
    """Make rules see ``params`` instead of ``module``'s own (used by canonizers such as BN merging).

    The module's parameters are not touched; only :func:`params_of` answers differently.
    """
    previous = _param_overrides.get(module)
    _param_overrides[module] = dict(params)
    try:
        yield
    finally:
        if previous is None:
            _param_overrides.pop(module, None)
        else:
            _param_overrides[module] = previous


def params_of(module: torch.nn.Module) -> Params:
    """Return the module's direct parameters by name, as canonizers present them."""
    override = _param_overrides.get(module)
    if override is not None:
        return dict(override)
    return {name: param for name, param in module._parameters.items()}


class LayerOp:
    """A layer as a function of its (tensor) inputs and parameters.

    Subclasses implement :meth:`forward` and :meth:`transpose`. ``inputs`` are always a
    tuple of tensors; ``params`` maps parameter names to tensors (``None`` for absent).
    """

    def forward(self, inputs: tuple[torch.Tensor, ...], params: Params) -> torch.Tensor:
        """Return the layer's output for ``inputs`` and ``params``."""
        raise NotImplementedError

    def transpose(
        self, grad: torch.Tensor, inputs: tuple[torch.Tensor, ...], params: Params
    ) -> tuple[torch.Tensor | None, ...]:
        """Return the vector-Jacobian product ``J^T grad`` with respect to each input."""
        raise NotImplementedError


class LinearOp(LayerOp):
    """``torch.nn.Linear`` (and subclasses): ``x W^T + b``."""

    def forward(self, inputs, params):
        """Return the layer's output for ``inputs`` and ``params``."""
        return F.linear(inputs[0], params["weight"], params.get("bias"))

    def transpose(self, grad, inputs, params):
        """Return ``J^T grad`` with respect to each input."""
        return (grad.matmul(params["weight"]),)


class ConvOp(LayerOp):
    """Convolutions and transposed convolutions (1d/2d/3d, any stride, dilation and groups).

    Zero padding uses the explicit input-gradient kernel; other padding modes (and string
    padding such as ``"same"``) differentiate the module's own convolution through autograd.
    """

    def __init__(self, module: torch.nn.modules.conv._ConvNd, output_padding: tuple[int, ...] | None = None) -> None:
        self.module = module
        self.transposed = module.transposed
        self.output_padding = list(output_padding if output_padding is not None else module.output_padding)
        self.explicit = module.padding_mode == "zeros" and not isinstance(module.padding, str)

    def forward(self, inputs, params):
        """Return the layer's output for ``inputs`` and ``params``."""
        m = self.module
        if not self.transposed:
            return m._conv_forward(inputs[0], params["weight"], params.get("bias"))
        conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[len(m.kernel_size) - 1]
        weight, bias = params["weight"], params.get("bias")
        return conv_t(inputs[0], weight, bias, m.stride, m.padding, self.output_padding, m.groups, m.dilation)

    def transpose(self, grad, inputs, params):
        """Return ``J^T grad`` with respect to each input."""
        if not self.explicit:
            return _autograd_transpose(self, grad, inputs, params)
        m = self.module
        x = inputs[0]
        unbatched = x.ndim == len(m.kernel_size) + 1  # (C, *spatial): the kernel needs a batch dimension
        if unbatched:
            x, grad = x.unsqueeze(0), grad.unsqueeze(0)
        grad_input, _, _ = torch.ops.aten.convolution_backward(
            grad.contiguous(),
            x,
            params["weight"],
            None,
            list(m.stride),
            list(m.padding),
            list(m.dilation),
            self.transposed,
            self.output_padding if self.transposed else [0] * len(m.stride),
            m.groups,
            [True, False, False],
        )
        return (grad_input.squeeze(0) if unbatched else grad_input,)


class GenericOp(LayerOp):
    """Any module: its own forward with substituted parameters, transposed through autograd.

    Parameters
    ----------
    module : torch.nn.Module
        The layer.
    forward : Callable
        The module's forward as it was before rules were attached.
    rebuild : Callable
        Turns a tuple of input tensors into the ``(args, kwargs)`` of the recorded call
        (arguments that are not inputs keep their recorded values).
    """

    def __init__(self, module: torch.nn.Module, forward: Callable[..., Any], rebuild: Callable) -> None:
        self.module = module
        self.original_forward = forward
        self.rebuild = rebuild

    def forward(self, inputs, params):
        """Return the layer's output for ``inputs`` and ``params``."""
        args, kwargs = self.rebuild(inputs)
        current = self.module._parameters
        changed = {k: v for k, v in params.items() if k in current and current[k] is not None and v is not current[k]}
        with rule_computation():
            if not changed:
                return self.original_forward(*args, **kwargs)
            with torch.nn.utils.stateless._reparametrize_module(self.module, changed):
                return self.original_forward(*args, **kwargs)

    def transpose(self, grad, inputs, params):
        """Return ``J^T grad`` with respect to each input."""
        return _autograd_transpose(self, grad, inputs, params)


def _autograd_transpose(op: LayerOp, grad, inputs, params):
    """``J^T grad`` by differentiating ``op.forward``; keeps the graph under ``create_graph``."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        leaves = tuple(x if (create_graph and x.requires_grad) else x.detach().requires_grad_() for x in inputs)
        out = op.forward(leaves, params)
        grads = torch.autograd.grad(out, leaves, grad, allow_unused=True, create_graph=create_graph)
    return tuple(g if g is not None else torch.zeros_like(x) for g, x in zip(grads, inputs))


class SumOp(LayerOp):
    """:class:`zplug.layers.Sum`: several summands (broadcast), or one tensor summed over ``dim``."""

    def __init__(self, module) -> None:
        self.module = module
        self.dim = module.dim

    def forward(self, inputs, params):
        """Return the layer's output for ``inputs`` (the class's forward: an instance may be patched)."""
        return type(self.module).forward(self.module, *inputs)

    def transpose(self, grad, inputs, params):
        """Return ``J^T grad`` for each input (summed over broadcast dimensions)."""
        if len(inputs) == 1:
            return (grad.unsqueeze(self.dim).expand_as(inputs[0]),)
        return tuple(_unbroadcast(grad, x.shape) for x in inputs)


def _unbroadcast(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``grad`` over the dimensions that broadcasting added or expanded to reach ``shape``."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    dims = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1)
    return grad.sum(dim=dims, keepdim=True).reshape(shape) if dims else grad.reshape(shape)


def op_for(
    module: torch.nn.Module, args: tuple, kwargs: Mapping[str, Any], forward: Callable[..., Any], rebuild: Callable
) -> LayerOp:
    """Choose the fastest exact :class:`LayerOp` for one call of ``module``."""
    if type(module) is Sum and not kwargs and all(isinstance(a, torch.Tensor) for a in args):
        return SumOp(module)
    if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
        if isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward:
            return LinearOp()
        if isinstance(module, torch.nn.modules.conv._ConvNd) and type(module).forward in _CONV_FORWARDS:
            return ConvOp(module)
    return GenericOp(module, forward, rebuild)


_CONV_FORWARDS = tuple(
    cls.forward
    for cls in (
        torch.nn.Conv1d,
        torch.nn.Conv2d,
        torch.nn.Conv3d,
        torch.nn.ConvTranspose1d,
        torch.nn.ConvTranspose2d,
        torch.nn.ConvTranspose3d,
    )
)


__all__ = (
    "ConvOp",
    "GenericOp",
    "SumOp",
    "LayerOp",
    "LinearOp",
    "Params",
    "inside_rule",
    "op_for",
    "override_params",
    "params_of",
    "rule_computation",
    "rules_applying",
)
