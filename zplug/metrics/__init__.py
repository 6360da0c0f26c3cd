"""Faithfulness metrics: how well relevance predicts what the model needs (see docs/evaluation.md).

Metrics are parts (:mod:`zplug.parts`) registered through the hook ``zplug_register_metrics``;
:func:`zplug.evaluate` runs one on a model, inputs and their relevance. Attributes are imported
lazily, so importing this package does not import torch.
"""

from __future__ import annotations

from zplug._lazy import lazy_attributes

_LAZY = {
    "Context": "zplug.metrics.base",
    "CurveRequest": "zplug.metrics.base",
    "Metric": "zplug.metrics.base",
    "make_metric": "zplug.metrics.base",
    "Curve": "zplug.metrics.records",
    "MetricResult": "zplug.metrics.records",
    "PixelFlipping": "zplug.metrics.perturbation",
    "RegionPerturbation": "zplug.metrics.perturbation",
    "SymmetricRelevanceGain": "zplug.metrics.perturbation",
    "Units": "zplug.metrics.units",
    "element_units": "zplug.metrics.units",
    "patch_units": "zplug.metrics.units",
    "pixel_units": "zplug.metrics.units",
}

__getattr__ = lazy_attributes("zplug.metrics", _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = tuple(sorted(_LAZY))
