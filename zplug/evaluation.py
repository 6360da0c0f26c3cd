"""``zplug.evaluate``: measure how faithful relevance is, with a registered metric."""

from __future__ import annotations

from typing import Any

import torch

from zplug.errors import ModelMismatchError, SpecError
from zplug.metrics.base import Context, Metric, Progress, make_metric
from zplug.metrics.records import MetricResult

#: ``relevance="random"``: uniform random relevance, the reference a method must beat.
RANDOM = "random"


def evaluate(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    target: Any = None,
    relevance: Any = None,
    *,
    metric: str | Metric = "srg",
    method: str | None = None,
    output_index: int | None = None,
    batch_size: int = 64,
    max_memory: int = 256 * 2**20,
    seed: int = 0,
    progress: Progress | None = None,
    **params: Any,
) -> MetricResult:
    """Measure the faithfulness of ``relevance`` for ``model`` on ``inputs`` with ``metric``.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier in ``eval()`` mode, called as ``model(inputs)``; it is not modified.
    inputs : torch.Tensor
        ``(N, C, ...)`` floating point (images ``(N, C, H, W)`` for patches).
    target : None, int, sequence of int or integer tensor
        The class whose score is followed: ``None`` is each sample's predicted class.
    relevance : torch.Tensor, zplug.Explanation or ``"random"``
        The attributions, shaped like ``inputs`` (or with one channel); an explanation from
        :func:`zplug.explain`; or ``"random"`` for uniform random relevance (seeded by ``seed``),
        the reference every method should beat.
    metric : str or Metric
        A registered metric name (``"pixel_flipping"``, ``"region_perturbation"``, ``"srg"``,
        a plugin's) with its parameters as keyword arguments, or a metric instance.
    method : str or None
        A label for the record (default: ``"random"`` or ``""``).
    output_index : int or None
        For models returning a tuple or list: which output holds the class scores.
    batch_size : int
        At most this many perturbed inputs go through the model at once.
    max_memory : int
        Bytes the perturbed inputs of one forward call may take (lowers ``batch_size`` for
        large inputs; the model's own activations are not counted).
    seed : int
        Seeds the ``noise`` baseline and random relevance.
    progress : callable or None
        ``progress(done, total)`` after each forward call.
    **params
        The metric's parameters (``order="lerf"``, ``patch_size=4``, ``baseline="blur"``, ...).

    Returns
    -------
    MetricResult
        One score per sample, the curves, and the metric with its parameters.

    Raises
    ------
    SpecError
        For an unknown parameter, an invalid value, or relevance that does not fit the inputs.
    ModelMismatchError
        For a model in training mode or one whose output is not ``(batch, classes)``.
    UnknownNameError
        For an unknown metric name.
    """
    metric = _metric(metric, params)
    x = _checked_inputs(inputs)
    for name, value in (("batch_size", batch_size), ("max_memory", max_memory)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"{name} must be an integer >= 1 (got {value!r})")
    if model.training:
        raise ModelMismatchError(
            "the model is in training mode: call model.eval() first (batch statistics would mix the perturbed inputs)"
        )
    generator = torch.Generator().manual_seed(seed)
    label = method
    if isinstance(relevance, str) and relevance == RANDOM:
        relevance = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(x)
        label = RANDOM if method is None else method
    relevance = _checked_relevance(relevance, x)
    context = Context(
        model, x, relevance, torch.zeros(x.shape[0], dtype=torch.long), output_index=output_index,
        batch_size=batch_size, max_memory=max_memory, generator=generator, progress=progress,
    )
    # target None means the predicted classes: known from the clean outputs, which the context computes and keeps
    context.targets = target_classes(target, context.clean_outputs())
    result = metric.measure(context)
    return result if label is None else _labelled(result, label)


def _labelled(result: MetricResult, label: str) -> MetricResult:
    import attrs

    return attrs.evolve(result, method=label)


def _metric(metric: str | Metric, params: dict[str, Any]) -> Metric:
    if isinstance(metric, Metric):
        if params:
            raise SpecError(
                f"parameters {', '.join(sorted(params))} were given with a metric instance; set them on the instance"
            )
        return metric
    if not isinstance(metric, str):
        raise SpecError(f"metric must be a registered name or a Metric instance (got {type(metric).__name__})")
    from zplug.registry import default_registry

    return make_metric(default_registry().metrics[metric], params)


def _checked_inputs(inputs: Any) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise SpecError(
            f"inputs must be one floating-point tensor (batch, channels, ...) (got {type(inputs).__name__})"
        )
    if not inputs.is_floating_point() or inputs.ndim < 2:
        raise SpecError(
            f"inputs must be a floating-point tensor of shape (batch, channels, ...) (got {str(inputs.dtype)[6:]} "
            f"of shape {tuple(inputs.shape)})"
        )
    return inputs.detach()


def _checked_relevance(relevance: Any, x: torch.Tensor) -> torch.Tensor:
    """The relevance as a tensor on the inputs' device, of the inputs' shape or with one channel."""
    from zplug.explanation import Explanation

    if isinstance(relevance, Explanation):
        relevance = relevance.relevance
    if relevance is None:
        raise SpecError("no relevance: pass a tensor, an explanation from zplug.explain, or 'random'")
    if isinstance(relevance, str):
        raise SpecError(f"relevance {relevance!r}: pass a tensor, an explanation, or 'random'")
    if not isinstance(relevance, torch.Tensor):
        raise SpecError(
            f"relevance must be a tensor shaped like the inputs (got {type(relevance).__name__}; a model with "
            "several inputs cannot be evaluated)"
        )
    shape = tuple(relevance.shape)
    one_channel = (x.shape[0], 1, *x.shape[2:])
    if shape not in (tuple(x.shape), one_channel):
        raise SpecError(
            f"relevance of shape {shape} does not fit inputs of shape {tuple(x.shape)}: it needs the inputs' shape "
            f"or {one_channel}"
        )
    return relevance.detach().to(x.device)


def target_classes(target: Any, output: torch.Tensor) -> torch.Tensor:
    """One class index per sample: ``None`` is the predicted class (long, on the CPU)."""
    from zplug.attributors.base import _classes

    if callable(target) and not isinstance(target, torch.Tensor):
        raise SpecError("a perturbation metric follows one class per sample: pass class indices, not a callable")
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        raise SpecError("a perturbation metric follows one class per sample: pass class indices, not output relevance")
    return _classes(target, output.detach()).cpu()


__all__ = ("RANDOM", "evaluate", "target_classes")
