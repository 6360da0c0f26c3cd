"""The built-in perturbation metrics: pixel flipping, region perturbation and the symmetric relevance gain.

Each removes parts of the input in the order the relevance gives and follows the model's score
of the target class (see ``docs/evaluation.md``):

* :class:`PixelFlipping`: pixels (or single input elements) in ``steps`` equal parts, or
  ``per_step`` at a time as Quantus's ``features_in_step``; score: the area under the curve over
  the fraction removed (MoRF: lower is better);
* :class:`RegionPerturbation`: one ``patch_size`` x ``patch_size`` patch per step, for ``regions``
  steps (Samek et al. 2017); score: the AOPC, the mean drop of the score (MoRF: higher is better);
* :class:`SymmetricRelevanceGain`: the same removal least- and most-relevant first; score:
  ``AUC(LeRF) - AUC(MoRF)`` (Blücher et al. 2024), about 0 for random relevance, higher is better.
"""

from __future__ import annotations

import attrs

from zplug.errors import SpecError
from zplug.metrics.base import (
    Context,
    CurveRequest,
    Metric,
    baseline_parameter,
    blur_sigma_parameter,
    even_counts,
    fixed_counts,
    order_parameter,
    score_parameter,
)
from zplug.metrics.records import MetricResult
from zplug.metrics.units import element_units, patch_units, pixel_units
from zplug.parts import parameter, positive_int


def _optional_positive(name: str, value: object) -> None:
    if value is not None:
        positive_int(name, value)


def _channels(name: str, value: object) -> None:
    if value not in ("sum", "separate"):
        raise SpecError(f"parameter '{name}' must be sum or separate (got {value!r})")


@attrs.frozen(kw_only=True)
class PixelFlipping(Metric):
    """Remove pixels in relevance order; the score is the area under the target-score curve."""

    name = "pixel_flipping"
    summary = "remove pixels in relevance order; score: area under the target-score curve (MoRF: lower is better)"

    order: str = order_parameter()
    steps: int | None = parameter(
        None, doc="remove the pixels in this many equal parts (default 32; not with per_step)",
        kind="integer >= 1 or None", check=_optional_positive,
    )
    per_step: int | None = parameter(
        None, doc="remove this many pixels (or elements) per step instead, as Quantus's features_in_step",
        kind="integer >= 1 or None", check=_optional_positive,
    )
    channels: str = parameter(
        "sum", doc="sum: a pixel's channels go together (relevance summed); separate: every input element alone",
        kind="sum or separate", check=_channels,
    )
    baseline: object = baseline_parameter()
    blur_sigma: float = blur_sigma_parameter()
    score: str = score_parameter()

    def __attrs_post_init__(self) -> None:
        if self.steps is not None and self.per_step is not None:
            raise SpecError("give either 'steps' or 'per_step', not both")

    @property
    def higher_is_better(self) -> bool:
        """MoRF: a faithful explanation makes the score fall fast (small area); LeRF: the reverse."""
        return self.order == "lerf"

    def measure(self, context: Context) -> MetricResult:
        """Compute the curve and its area per sample."""
        shape = context.sample_shape
        units = element_units(shape) if self.channels == "separate" else pixel_units(shape)
        if self.per_step is not None:
            counts = fixed_counts(units.count, self.per_step)
        else:
            counts = even_counts(units.count, 32 if self.steps is None else self.steps)
        request = CurveRequest(
            order=self.order, units=units, counts=counts, baseline=self.baseline, blur_sigma=self.blur_sigma
        )
        (curve,) = context.curves([request], score=self.score)
        return context.result(self, curve.auc(), {self.order: curve})


@attrs.frozen(kw_only=True)
class RegionPerturbation(Metric):
    """Remove square patches one per step in relevance order; the score is the AOPC."""

    name = "region_perturbation"
    summary = "remove patches one per step in relevance order; score: AOPC, the mean drop (MoRF: higher is better)"

    order: str = order_parameter()
    patch_size: int = parameter(8, doc="the side of a square patch in pixels (all channels)", kind="integer >= 1",
                                check=positive_int)
    regions: int = parameter(100, doc="how many patches are removed, one per step (at most all of them)",
                             kind="integer >= 1", check=positive_int)
    baseline: object = baseline_parameter()
    blur_sigma: float = blur_sigma_parameter()
    score: str = score_parameter()

    @property
    def higher_is_better(self) -> bool:
        """MoRF: a faithful explanation makes the score drop most (large AOPC); LeRF: the reverse."""
        return self.order == "morf"

    def measure(self, context: Context) -> MetricResult:
        """Compute the curve and its AOPC per sample."""
        units = patch_units(context.sample_shape, self.patch_size)
        counts = fixed_counts(units.count, 1, self.regions)
        request = CurveRequest(
            order=self.order, units=units, counts=counts, baseline=self.baseline, blur_sigma=self.blur_sigma
        )
        (curve,) = context.curves([request], score=self.score)
        return context.result(self, curve.aopc(), {self.order: curve})


@attrs.frozen(kw_only=True)
class SymmetricRelevanceGain(Metric):
    """Remove patches least- and most-relevant first; the score is AUC(LeRF) - AUC(MoRF)."""

    name = "srg"
    summary = "symmetric relevance gain: AUC(LeRF) - AUC(MoRF) over the fraction removed (higher is better)"

    patch_size: int = parameter(1, doc="the side of a square patch in pixels (1: single pixels)", kind="integer >= 1",
                                check=positive_int)
    steps: int = parameter(32, doc="remove the patches in this many equal parts (at most one patch per step)",
                           kind="integer >= 1", check=positive_int)
    baseline: object = baseline_parameter()
    blur_sigma: float = blur_sigma_parameter()
    score: str = score_parameter()

    def measure(self, context: Context) -> MetricResult:
        """Compute both curves (in shared batches) and the gain per sample."""
        units = patch_units(context.sample_shape, self.patch_size)
        counts = even_counts(units.count, self.steps)
        requests = [
            CurveRequest(order=order, units=units, counts=counts, baseline=self.baseline, blur_sigma=self.blur_sigma)
            for order in ("morf", "lerf")
        ]
        morf, lerf = context.curves(requests, score=self.score)
        return context.result(self, lerf.auc() - morf.auc(), {"morf": morf, "lerf": lerf})


__all__ = ("PixelFlipping", "RegionPerturbation", "SymmetricRelevanceGain")
