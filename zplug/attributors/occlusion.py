"""Occlusion: how much the target output drops when a window of the input is replaced."""

from __future__ import annotations

import itertools
from numbers import Integral, Real
from typing import Any

import attrs

from zplug._lazy import lazy_module
from zplug.attributors.base import Attributor, Problem, Tensors, chunk_size_parameter, chunks
from zplug.errors import SpecError
from zplug.parts import parameter

torch = lazy_module("torch")  # imported when relevance is computed, not to declare the attributor


def _to_sizes(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    return value


def _check_sizes(name: str, value: Any) -> None:
    if value is None and name == "stride":
        return
    values = value if isinstance(value, tuple) else (value,)
    if not values or not all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 1 for v in values):
        raise SpecError(f"parameter '{name}' must be an integer >= 1 or a tuple of them (got {value!r})")


def _check_fill(name: str, value: Any) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if not (isinstance(v, torch.Tensor) or (isinstance(v, Real) and not isinstance(v, bool))):
            raise SpecError(f"parameter '{name}' must be a number, a tensor, or a tuple of these per input (got {v!r})")


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one dimension: ``0, stride, ...`` until a window reaches the end (no wrap-around).

    The last window is cut at the edge when ``window`` does not fit; every position is covered.
    """
    window = min(window, size)
    starts = [0]
    while starts[-1] + window < size:
        starts.append(starts[-1] + stride)
    return starts


@attrs.frozen(kw_only=True)
class Occlusion(Attributor):
    """Occlusion: the drop of the target score when a sliding window of the input is filled with ``fill``.

    The score of an input ``x'`` is ``sum(v * f(x'))`` per sample, where ``v`` is the output
    relevance of the target on the clean output (for a class ``c``: ``f(x')[:, c]``). Each
    input position gets the mean of ``score(x) - score(x with the window filled)`` over the
    windows that cover it, as Captum's ``Occlusion`` (with ``baselines=fill``).

    Windows never wrap around: they start at ``0, stride, 2 stride, ...`` and the last one is
    cut at the edge, so every position is covered (unless ``stride > window``: positions no
    window covers get 0). An int ``window``/``stride`` applies to
    every dimension after the channel dimension (all non-batch dimensions of a 2-D input);
    a tuple applies to the last ``len(tuple)`` dimensions, and the dimensions before them are
    covered whole. ``stride=None`` means ``stride=window`` (non-overlapping windows). With
    several inputs, each is occluded in turn while the others stay clean. The model's rules
    play no role here (no gradients), so a mapping is not applied.
    """

    name = "occlusion"
    summary = "score drop when a sliding window is filled (no wrap-around; mean over covering windows)"
    uses_gradient = False
    window: int | tuple[int, ...] = parameter(
        8, doc="window size: an int for every dimension after the channels, or a tuple for the last dimensions",
        kind="integer >= 1 or tuple", check=_check_sizes, converter=_to_sizes,
    )
    stride: int | tuple[int, ...] | None = parameter(
        None, doc="window step, like window; None: equal to window", kind="integer >= 1, tuple or none",
        check=_check_sizes, converter=_to_sizes,
    )
    fill: Any = parameter(
        0.0, doc="value of the occluded positions: a number, a tensor broadcast to the input, or a tuple per input",
        kind="number or tensor", check=_check_fill,
    )
    chunk_size: int = chunk_size_parameter()

    def windows(self, shape: tuple[int, ...]) -> list[tuple[slice, ...]]:
        """Return the windows (slices over the non-batch dimensions) for an input of ``shape``."""
        dims = shape[1:]
        window = _per_dim(self.window, dims, "window")
        stride = window if self.stride is None else _per_dim(self.stride, dims, "stride", full=False)
        per_dim = []
        for size, w, s in zip(dims, window, stride):
            w = min(w, size)
            per_dim.append([slice(a, min(a + w, size)) for a in window_starts(size, w, s)])
        return list(itertools.product(*per_dim))

    def attribute(self, problem: Problem) -> tuple[torch.Tensor, Tensors]:
        """Return ``(clean output, mean score drop per position)``."""
        output = problem.clean_output()
        v = problem.output_relevance(output)(output)
        clean = _score(v, output)
        fills = self.fill if isinstance(self.fill, tuple) else (self.fill,) * len(problem.inputs)
        if len(fills) != len(problem.inputs):
            raise SpecError(f"parameter 'fill' has {len(fills)} entries for {len(problem.inputs)} inputs")
        plans = [(i, w) for i, x in enumerate(problem.inputs) for w in self.windows(tuple(x.shape))]
        sums = [torch.zeros_like(x) for x in problem.inputs]
        counts = [torch.zeros_like(x[:1]) for x in problem.inputs]
        filled = [_fill(f, x) for f, x in zip(fills, problem.inputs)]
        n = problem.batch
        for part in chunks(len(plans), self.chunk_size):
            batch = []
            for k in part:
                i, win = plans[k]
                xs = list(problem.inputs)
                occluded = xs[i].clone()
                occluded[(slice(None), *win)] = filled[i][(slice(None), *win)]
                xs[i] = occluded
                batch.append(xs)
            stacked = tuple(torch.cat([xs[j] for xs in batch]) for j in range(len(problem.inputs)))
            with torch.no_grad():
                out = problem.forward(stacked)
            scores = _score(v.repeat(len(part), *([1] * (v.ndim - 1))), out).reshape(len(part), n)
            for row, k in enumerate(part):
                i, win = plans[k]
                drop = (clean - scores[row]).reshape(n, *([1] * (sums[i].ndim - 1)))
                sums[i][(slice(None), *win)] += drop
                counts[i][(slice(None), *win)] += 1
            problem.report(part.stop, len(plans))
        return output, tuple(s / c.clamp(min=1) for s, c in zip(sums, counts))


def _per_dim(value: int | tuple[int, ...], dims: tuple[int, ...], name: str, full: bool = True) -> tuple[int, ...]:
    if isinstance(value, tuple):
        if len(value) > len(dims):
            raise SpecError(
                f"parameter '{name}' has {len(value)} entries but the input has only {len(dims)} non-batch dimensions"
            )
        lead = tuple(dims[: len(dims) - len(value)]) if full else (1,) * (len(dims) - len(value))
        return lead + value
    if len(dims) >= 2:
        return (dims[0] if full else 1,) + (value,) * (len(dims) - 1)
    return (value,) * len(dims)


def _fill(value: Any, x: torch.Tensor) -> torch.Tensor:
    fill = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    try:
        return fill.expand_as(x)
    except RuntimeError:
        message = f"the fill of shape {tuple(fill.shape)} does not broadcast to the input of shape {tuple(x.shape)}"
        raise SpecError(message) from None


def _score(v: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    return (v.to(output) * output).reshape(output.shape[0], -1).sum(1)


__all__ = ("Occlusion", "window_starts")
