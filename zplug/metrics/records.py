"""The records a metric returns: perturbation curves and per-sample scores."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from zplug._lazy import lazy_module

torch = lazy_module("torch")


@attrs.frozen(kw_only=True, eq=False)
class Curve:
    """The target score of each sample after each perturbation step.

    Attributes
    ----------
    order : str
        ``"morf"`` (most relevant first), ``"lerf"`` (least relevant first) or ``"random"``.
    counts : torch.Tensor
        ``(K + 1,)`` long: how many units are removed after step ``k`` (``counts[0] == 0``).
    units : int
        How many units the sample has (``fractions = counts / units``).
    scores : torch.Tensor
        ``(N, K + 1)`` float64: the target score (probability or logit) after step ``k``;
        column 0 is the clean input.
    """

    order: str
    counts: torch.Tensor
    units: int
    scores: torch.Tensor

    @property
    def steps(self) -> int:
        """The number of perturbation steps ``K``."""
        return self.scores.shape[1] - 1

    @property
    def fractions(self) -> torch.Tensor:
        """``(K + 1,)``: the fraction of the units removed after each step."""
        return self.counts.double() / self.units

    @property
    def drops(self) -> torch.Tensor:
        """``(N, K + 1)``: the clean score minus the score after each step."""
        return self.scores[:, :1] - self.scores

    def auc(self) -> torch.Tensor:
        """``(N,)``: the area under the curve over the fraction removed (trapezoid, clean point included)."""
        return torch.trapezoid(self.scores, self.fractions.to(self.scores), dim=1)

    def aopc(self) -> torch.Tensor:
        """``(N,)``: the area over the perturbation curve, the mean drop over steps ``0 .. K``."""
        return self.drops.mean(1)

    def step_auc(self) -> torch.Tensor:
        """``(N,)``: the trapezoid over the perturbed points with unit spacing (Quantus's ``return_auc_per_sample``)."""
        return torch.trapezoid(self.scores[:, 1:], dx=1.0, dim=1)

    def mean(self) -> list[float]:
        """The curve averaged over the samples."""
        return self.scores.mean(0).tolist()

    @classmethod
    def concat(cls, curves: Sequence[Curve]) -> Curve:
        """Join the curves of several batches (same order and steps)."""
        first = curves[0]
        for other in curves[1:]:
            if other.order != first.order or not torch.equal(other.counts, first.counts):
                raise ValueError("only curves of the same order and steps can be joined")
        return cls(
            order=first.order, counts=first.counts, units=first.units, scores=torch.cat([c.scores for c in curves])
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: the fractions and the mean curve."""
        return {"order": self.order, "units": self.units, "fractions": self.fractions.tolist(), "mean": self.mean()}


@attrs.frozen(kw_only=True, eq=False)
class MetricResult:
    """What a metric measured for one explanation method on a batch.

    Attributes
    ----------
    metric : zplug.metrics.Metric
        The metric with its parameters.
    scores : torch.Tensor
        ``(N,)`` float64: the metric's score of each sample.
    curves : Mapping[str, Curve]
        The perturbation curves, by order.
    targets : torch.Tensor
        ``(N,)`` long: the class whose score was followed.
    method : str
        What produced the attributions (a preset, an attributor, ``"random"``), for tables.
    higher_is_better : bool
        Whether a larger score means a more faithful explanation.
    """

    metric: Any
    scores: torch.Tensor
    curves: Mapping[str, Curve] = attrs.field(factory=dict)
    targets: torch.Tensor
    method: str = ""
    higher_is_better: bool = True

    @property
    def mean(self) -> float:
        """The mean score over the samples."""
        return float(self.scores.mean())

    @property
    def sem(self) -> float:
        """The standard error of the mean score (0 for one sample)."""
        n = self.scores.numel()
        return float(self.scores.std() / math.sqrt(n)) if n > 1 else 0.0

    def __len__(self) -> int:
        return self.scores.numel()

    @classmethod
    def concat(cls, results: Sequence[MetricResult]) -> MetricResult:
        """Join the results of several batches of one metric and method."""
        first = results[0]
        orders = list(first.curves)
        return attrs.evolve(
            first,
            scores=torch.cat([r.scores for r in results]),
            targets=torch.cat([r.targets for r in results]),
            curves={order: Curve.concat([r.curves[order] for r in results]) for order in orders},
        )

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        """A JSON-ready dictionary (per-sample scores included if ``samples``)."""
        out: dict[str, Any] = {
            "method": self.method,
            "metric": self.metric.name,
            "params": {k: _plain(v) for k, v in self.metric.params().items()},
            "higher_is_better": self.higher_is_better,
            "n": len(self),
            "mean": self.mean,
            "sem": self.sem,
            "curves": {order: curve.to_dict() for order, curve in self.curves.items()},
        }
        if samples:
            out["scores"] = self.scores.tolist()
            out["targets"] = self.targets.tolist()
        return out

    def __repr__(self) -> str:
        return f"MetricResult({self.metric!r}, method={self.method!r}, n={len(self)}, mean={self.mean:.6g})"


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


__all__ = ("Curve", "MetricResult")
