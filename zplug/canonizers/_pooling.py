"""Functional pooling and means as modules: which calls can be replaced, and by what.

``F.avg_pool2d(x, 3, 1, 1)`` in a forward (inception_v3) or ``x.mean([2, 3])`` (ShuffleNetV2)
has no module, so no rule sees it; the plain gradient of an average is not what the ``norm``
rule of ``avgpool`` layers gives, and relevance is lost or created. The functions below say
which module computes the same thing, for calls whose arguments other than the input are
constants (a kernel size computed from the input's shape cannot be fixed in a module).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
import torch.nn.functional as F  # noqa: N812

from zplug.layers import Mean

_AVG = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_MAX = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_ADAPTIVE_AVG = ("output_size",)
_ADAPTIVE_MAX = ("output_size", "return_indices")

#: ``function -> (module class, the function's parameters after the input, in order)``.
POOLING = {
    F.avg_pool1d: (torch.nn.AvgPool1d, _AVG[:-1]),
    F.avg_pool2d: (torch.nn.AvgPool2d, _AVG),
    F.avg_pool3d: (torch.nn.AvgPool3d, _AVG),
    F.max_pool1d: (torch.nn.MaxPool1d, _MAX),
    F.max_pool2d: (torch.nn.MaxPool2d, _MAX),
    F.max_pool3d: (torch.nn.MaxPool3d, _MAX),
    F.adaptive_avg_pool1d: (torch.nn.AdaptiveAvgPool1d, _ADAPTIVE_AVG),
    F.adaptive_avg_pool2d: (torch.nn.AdaptiveAvgPool2d, _ADAPTIVE_AVG),
    F.adaptive_avg_pool3d: (torch.nn.AdaptiveAvgPool3d, _ADAPTIVE_AVG),
    F.adaptive_max_pool1d: (torch.nn.AdaptiveMaxPool1d, _ADAPTIVE_MAX),
    F.adaptive_max_pool2d: (torch.nn.AdaptiveMaxPool2d, _ADAPTIVE_MAX),
    F.adaptive_max_pool3d: (torch.nn.AdaptiveMaxPool3d, _ADAPTIVE_MAX),
}


def _constant(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_constant(v) for v in value)
    return value is None or (isinstance(value, (int, float, bool)) and not isinstance(value, torch.fx.Node))


def pooling_module(node: torch.fx.Node) -> torch.nn.Module | None:
    """The pooling module that computes what ``node`` (a functional pooling call) computes, or ``None``."""
    if node.op != "call_function" or not node.args:
        return None
    entry = POOLING.get(node.target)
    if entry is None:
        return None
    cls, names = entry
    rest = node.args[1:]
    if len(rest) > len(names) or any(key not in names for key in node.kwargs):
        return None
    values = {**dict(zip(names, rest)), **node.kwargs}
    if not all(_constant(v) for v in values.values()) or values.get("return_indices"):
        return None
    return cls(**values)


def mean_module(node: torch.fx.Node) -> Mean | None:
    """A :class:`~zplug.layers.Mean` for ``x.mean(dim, keepdim)`` / ``torch.mean(x, dim, keepdim)``, or ``None``."""
    if not ((node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    )):
        return None
    if not node.args or set(node.kwargs) - {"dim", "keepdim"} or len(node.args) > 3:
        return None
    values = {**dict(zip(("dim", "keepdim"), node.args[1:])), **node.kwargs}
    dim = values.get("dim")
    if isinstance(dim, list):
        dim = tuple(dim)
    if not _constant(dim) or not isinstance(values.get("keepdim", False), bool):
        return None
    return Mean(dim=dim, keepdim=values.get("keepdim", False))


__all__ = ("POOLING", "mean_module", "pooling_module")
