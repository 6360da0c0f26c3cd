"""The objective of a search: a preset's faithfulness on a data set, for given parameter values."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from zplug.metrics.base import Metric
from zplug.metrics.records import MetricResult

#: One batch of the data set: inputs and their target (``None``: the predicted class).
Batch = tuple[torch.Tensor, Any]


class Objective:
    """Explain every batch with a preset and measure the relevance with a metric.

    Parameters
    ----------
    model : torch.nn.Module
        The model, in evaluation mode.
    batches : sequence of (inputs, target)
        The data set.
    metric : Metric
        What is measured.
    preset : str, Path or Preset or None
        The preset whose parameters are searched (``None``: plain gradients, for references).
    fixed : Mapping or None
        Preset parameters that are not searched (e.g. ``low`` and ``high``).
    attributor : str or Attributor
        How the relevance is computed (``"gradient"``: LRP with the preset).
    seed : int
        Batch ``b`` runs with seed ``seed + b`` (noise baselines, sample-based attributors).
    batch_size, max_memory : int
        Passed to :func:`zplug.evaluate`.
    strict : bool
        Fail if a module with parameters gets no rule.
    progress : callable or None
        ``progress(batches_done, batches)`` after each batch.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        batches: Sequence[Batch],
        metric: Metric,
        *,
        preset: Any = None,
        fixed: Mapping[str, Any] | None = None,
        attributor: Any = "gradient",
        seed: int = 0,
        batch_size: int = 64,
        max_memory: int = 256 * 2**20,
        strict: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.model = model
        self.batches = list(batches)
        self.metric = metric
        self.preset = preset
        self.fixed = dict(fixed or {})
        self.attributor = attributor
        self.seed = seed
        self.batch_size = batch_size
        self.max_memory = max_memory
        self.strict = strict
        self.progress = progress

    def mapping(self, params: Mapping[str, Any]) -> Any:
        """The layer mapping of the preset with ``params`` (``None`` without a preset)."""
        if self.preset is None:
            return None
        from zplug.resolver import resolve

        return resolve(self.model, self.preset, strict=self.strict, **{**self.fixed, **params})

    def __call__(self, params: Mapping[str, Any] | None = None, *, method: str = "") -> MetricResult:
        """Measure the preset with ``params`` on every batch; the per-sample results, joined."""
        from zplug.explanation import explain

        mapping = self.mapping(params or {})
        results = []
        for number, (x, target) in enumerate(self.batches):
            torch.manual_seed(self.seed + number)
            explanation = explain(self.model, x, target, attributor=self.attributor, mapping=mapping)
            results.append(self.measure(x, target, explanation.relevance, number, method))
        return MetricResult.concat(results)

    def random(self, *, method: str = "random") -> MetricResult:
        """The reference: uniformly random relevance (seeded per batch)."""
        return MetricResult.concat(
            [self.measure(x, target, "random", number, method) for number, (x, target) in enumerate(self.batches)]
        )

    def measure(self, x: torch.Tensor, target: Any, relevance: Any, number: int, method: str) -> MetricResult:
        """Measure one batch's relevance."""
        from zplug.evaluation import evaluate

        result = evaluate(
            self.model, x, target, relevance, metric=self.metric, method=method, seed=self.seed + number,
            batch_size=self.batch_size, max_memory=self.max_memory,
        )
        if self.progress is not None:
            self.progress(number + 1, len(self.batches))
        return result


__all__ = ("Batch", "Objective")
