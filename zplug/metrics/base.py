"""The metric base class and the context it measures in (batched, memory-bounded model calls).

A metric is a part (:mod:`zplug.parts`): a frozen attrs class with ``name``, ``summary`` and its
parameters as fields. :meth:`Metric.measure` receives a :class:`Context` (the model, the inputs,
their relevance and the target classes) and returns a :class:`~zplug.metrics.records.MetricResult`.
Perturbation metrics describe their curves as :class:`CurveRequest` objects and let
:meth:`Context.curves` run them: every (curve, sample, step) triple becomes one perturbed input,
and the triples go through the model in batches, so the number of forward calls does not grow
with the number of steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from zplug._lazy import lazy_module
from zplug.errors import ModelMismatchError, SpecError
from zplug.metrics.baselines import check_baseline, fill_values, running_mean_table
from zplug.metrics.records import Curve, MetricResult
from zplug.metrics.units import Units
from zplug.parts import Part, make_part, non_negative, parameter

torch = lazy_module("torch")

#: ``progress(done, total)``: perturbed inputs scored so far, of all in this call.
Progress = Callable[[int, int], None]
ORDERS = ("morf", "lerf")
SCORES = ("softmax", "logit")


def _one_of(options: Sequence[str]) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if value not in options:
            raise SpecError(f"parameter '{name}' must be one of {', '.join(options)} (got {value!r})")

    return check


def order_parameter(default: str = "morf") -> Any:
    """Declare ``order``: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first)."""
    return parameter(
        default, doc="remove the most relevant units first (morf) or the least relevant first (lerf)",
        kind="morf or lerf", check=_one_of(ORDERS),
    )


def baseline_parameter(default: Any = "black") -> Any:
    """Declare ``baseline``: what removed elements become (see :mod:`zplug.metrics.baselines`)."""
    return parameter(
        default, doc="what removed elements become: black, white, mean, running_mean, blur, noise, or a number",
        kind="name, number or tensor", check=check_baseline,
    )


def blur_sigma_parameter(default: float = 4.0) -> Any:
    """Declare ``blur_sigma``: the Gaussian's standard deviation of the ``blur`` baseline."""
    return parameter(default, doc="standard deviation in pixels of the blur baseline", kind="number >= 0",
                     check=non_negative)


def score_parameter(default: str = "softmax") -> Any:
    """Declare ``score``: follow the target's softmax probability or its logit."""
    return parameter(default, doc="the followed score: the target's softmax probability or its logit",
                     kind="softmax or logit", check=_one_of(SCORES))


@attrs.frozen(kw_only=True)
class Metric(Part):
    """Base class of every metric (a part, :mod:`zplug.parts`).

    Subclasses set ``name`` and ``summary``, declare their parameters with
    :func:`zplug.parts.parameter`, and implement :meth:`measure`.
    """

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger score means a more faithful explanation."""
        return True

    def measure(self, context: Context) -> MetricResult:
        """Return the metric's result for the inputs, relevance and targets of ``context``."""
        raise NotImplementedError


def make_metric(cls: type[Metric], params: Mapping[str, Any]) -> Metric:
    """Construct ``cls`` from a parameter mapping, with errors that name the parameter."""
    return make_part("metric", cls, params)


@attrs.frozen(kw_only=True, eq=False)
class CurveRequest:
    """One perturbation curve to compute.

    Attributes
    ----------
    order : str
        ``"morf"`` or ``"lerf"``.
    units : Units
        What is removed together.
    counts : torch.Tensor
        ``(K + 1,)`` long, increasing from 0: the units removed after each step.
    baseline : str, number or tensor
        What removed elements become.
    blur_sigma : float
        For the ``blur`` baseline.
    """

    order: str
    units: Units
    counts: torch.Tensor
    baseline: Any = "black"
    blur_sigma: float = 4.0

    @property
    def steps(self) -> int:
        """The number of perturbation steps ``K``."""
        return self.counts.numel() - 1


def even_counts(units: int, steps: int) -> torch.Tensor:
    """``ceil(k * units / steps)`` for ``k = 0 .. steps`` (``steps`` is capped at ``units``)."""
    steps = min(steps, units)
    k = torch.arange(steps + 1)
    return (k * units + steps - 1) // steps


def fixed_counts(units: int, per_step: int, limit: int | None = None) -> torch.Tensor:
    """``min(k * per_step, units)`` for ``k = 0 .. ceil(units / per_step)`` (at most ``limit`` steps)."""
    steps = -(-units // per_step)
    if limit is not None:
        steps = min(steps, limit)
    return torch.clamp(torch.arange(steps + 1) * per_step, max=units)


def ranks(unit_relevance: torch.Tensor, order: str) -> torch.Tensor:
    """The position of each unit in the removal order, ``(N, P)``; ties keep the units' index order."""
    key = -unit_relevance if order == "morf" else unit_relevance
    permutation = torch.sort(key, dim=1, stable=True).indices
    positions = torch.arange(key.shape[1], device=key.device).expand_as(permutation)
    return torch.empty_like(permutation).scatter_(1, permutation, positions)


class Context:
    """The model, inputs, relevance and targets a metric measures on.

    Parameters
    ----------
    model : torch.nn.Module
        In evaluation mode; called as ``model(x)`` without gradients.
    inputs : torch.Tensor
        ``(N, C, ...)`` floating point.
    relevance : torch.Tensor
        The attributions, of the inputs' shape (a channel dimension of 1 is broadcast).
    targets : torch.Tensor
        ``(N,)`` long: the class whose score is followed.
    output_index : int or None
        For models that return a tuple or list: which output holds the class scores.
    batch_size : int
        At most this many perturbed inputs per forward call.
    max_memory : int
        Bytes the perturbed inputs of one forward call (and their bookkeeping) may take; lowers
        ``batch_size`` for large inputs. Activations inside the model are not counted.
    generator : torch.Generator
        Random numbers (the ``noise`` baseline).
    progress : callable or None
        ``progress(done, total)`` after each forward call of :meth:`curves`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        inputs: torch.Tensor,
        relevance: torch.Tensor,
        targets: torch.Tensor,
        *,
        output_index: int | None = None,
        batch_size: int = 64,
        max_memory: int = 256 * 2**20,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.model = model
        self.inputs = inputs
        self.relevance = relevance.expand_as(inputs) if relevance.shape != inputs.shape else relevance
        self.targets = targets
        self.output_index = output_index
        self.batch_size = batch_size
        self.max_memory = max_memory
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.progress = progress
        self._clean: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        """The number of samples ``N``."""
        return self.inputs.shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample, ``(C, ...)``."""
        return tuple(self.inputs.shape[1:])

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The model's class scores for ``x`` (no gradients)."""
        from zplug.attributors.base import select_output

        with torch.no_grad():
            out = select_output(self.model(x), self.output_index)
        if out.ndim != 2:
            raise ModelMismatchError(
                f"perturbation metrics need class scores of shape (batch, classes); the model returned shape "
                f"{tuple(out.shape)}"
            )
        return out

    def scores(self, x: torch.Tensor, samples: torch.Tensor, score: str) -> torch.Tensor:
        """The target score of perturbed inputs ``x`` of samples ``samples`` (float64 on the CPU)."""
        out = self.outputs(x)
        if score == "softmax":
            out = out.softmax(1)
        return out.gather(1, self.targets[samples].to(out.device)[:, None])[:, 0].double().cpu()

    def clean_outputs(self) -> torch.Tensor:
        """The model's outputs for the clean inputs (computed once, in batches)."""
        if self._clean is None:
            parts = [self.outputs(chunk) for chunk in self.inputs.split(self.batch_size)]
            self._clean = torch.cat(parts)
        return self._clean

    def clean_scores(self, score: str) -> torch.Tensor:
        """``(N,)``: the target score of the clean inputs."""
        out = self.clean_outputs()
        if score == "softmax":
            out = out.softmax(1)
        return out.gather(1, self.targets.to(out.device)[:, None])[:, 0].double().cpu()

    def curves(self, requests: Sequence[CurveRequest], *, score: str = "softmax") -> list[Curve]:
        """Compute the perturbation curves of ``requests``, all in shared batches."""
        plans = [_Plan.build(self, request) for request in requests]
        which, samples, steps = _triples(self.batch, [plan.request.steps for plan in plans])
        per_input = max((plan.bytes_per_input for plan in plans), default=1)
        size = max(1, min(self.batch_size, self.max_memory // per_input))
        results = [torch.empty(self.batch, plan.request.steps + 1, dtype=torch.float64) for plan in plans]
        clean = self.clean_scores(score)
        for result in results:
            result[:, 0] = clean
        total = len(which)
        for start in range(0, total, size):
            part = slice(start, start + size)
            x = _assemble(plans, which[part], samples[part], steps[part])
            values = self.scores(x, samples[part], score)
            for p, result in enumerate(results):
                mine = which[part] == p
                result[samples[part][mine], steps[part][mine]] = values[mine]
            if self.progress is not None:
                self.progress(min(start + size, total), total)
        return [
            Curve(order=plan.request.order, counts=plan.request.counts, units=plan.request.units.count, scores=result)
            for plan, result in zip(plans, results)
        ]

    def result(
        self, metric: Metric, scores: torch.Tensor, curves: Mapping[str, Curve], *, method: str = ""
    ) -> MetricResult:
        """Build the record of ``metric`` from its per-sample scores and curves."""
        return MetricResult(
            metric=metric, scores=scores.double().cpu(), curves=dict(curves), targets=self.targets.cpu(),
            method=method, higher_is_better=metric.higher_is_better,
        )


class _Plan:
    """One curve request prepared for a batch: padded inputs, removal steps and fill values."""

    def __init__(self, request: CurveRequest, x_flat, step, fill, table, spatial) -> None:
        self.request = request
        self.x_flat = x_flat  # (N, E): the clean, padded samples
        self.step = step  # (N, E) int32: the step at which each element is removed (K + 1: never)
        self.fill = fill  # (N, E) or None: the fixed baseline
        self.table = table  # (N, K + 2) or None: the running-mean baseline per step
        self.spatial = spatial  # the padded shape of one sample
        element = x_flat.element_size()
        self.bytes_per_input = x_flat.shape[1] * (4 * element + 13)

    @classmethod
    def build(cls, context: Context, request: CurveRequest) -> _Plan:
        units, x = request.units, context.inputs
        counts = request.counts
        if counts.ndim != 1 or counts.numel() < 1 or int(counts[0]) != 0 or bool((counts.diff() <= 0).any()):
            raise SpecError("curve counts must start at 0 and increase")
        if int(counts[-1]) > units.count:
            raise SpecError(f"curve counts go up to {int(counts[-1])} units, but the input has {units.count}")
        unit_relevance = units.relevance(context.relevance)
        if not bool(torch.isfinite(unit_relevance).all()):
            raise SpecError("the relevance has NaN or infinite values; a perturbation order needs finite relevance")
        order = ranks(unit_relevance, request.order)
        unit_step = torch.searchsorted(counts[1:].to(order.device), order, right=True) + 1
        index = units.index.to(x.device)
        step = unit_step.gather(1, index.expand(x.shape[0], -1)).to(torch.int32)
        padded = units.pad(x, "edge")
        x_flat = padded.reshape(x.shape[0], -1)
        fill = table = None
        if isinstance(request.baseline, str) and request.baseline == "running_mean":
            table = running_mean_table(x_flat, step.long(), request.steps).to(x.dtype)
        else:
            values = fill_values(x, request.baseline, blur_sigma=request.blur_sigma, generator=context.generator)
            fill = units.pad(values.contiguous(), "edge").reshape(x.shape[0], -1)
        return cls(request, x_flat, step, fill, table, tuple(padded.shape[1:]))

    def inputs(self, samples: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """The perturbed inputs of ``samples`` after ``steps``: ``(B, C, ...)`` without padding."""
        removal = self.step[samples]
        removed = removal <= steps[:, None].to(removal)
        if self.table is not None:
            values = self.table[samples].gather(1, removal.long())
        else:
            values = self.fill[samples]
        perturbed = torch.where(removed, values, self.x_flat[samples])
        return self.request.units.crop(perturbed.reshape(len(samples), *self.spatial))


def _triples(batch: int, steps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (curve, sample, step) to score, curve-major then sample-major: three long tensors."""
    which, samples, ks = [], [], []
    for p, count in enumerate(steps):
        which.append(torch.full((batch * count,), p, dtype=torch.long))
        samples.append(torch.arange(batch).repeat_interleave(count))
        ks.append(torch.arange(1, count + 1).repeat(batch))
    if not which:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty, empty
    return torch.cat(which), torch.cat(samples), torch.cat(ks)


def _assemble(plans: Sequence[_Plan], which: torch.Tensor, samples: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Stack the perturbed inputs of a chunk of (curve, sample, step) triples, in order."""
    parts = []
    for p in torch.unique_consecutive(which).tolist():
        mine = which == p
        device = plans[p].x_flat.device
        parts.append(plans[p].inputs(samples[mine].to(device), steps[mine].to(device)))
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).contiguous()


__all__ = (
    "ORDERS",
    "SCORES",
    "Context",
    "CurveRequest",
    "Metric",
    "Progress",
    "baseline_parameter",
    "blur_sigma_parameter",
    "even_counts",
    "fixed_counts",
    "make_metric",
    "order_parameter",
    "ranks",
    "score_parameter",
)
