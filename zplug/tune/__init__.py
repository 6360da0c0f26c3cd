"""Tuning presets: search a preset's ``[params]`` for the most faithful explanations (see docs/evaluation.md).

:func:`tune` runs the search (grid, random or TPE), :func:`layer_group_preset` gives the low, middle and
high convolutions and the dense layers of a model their own gamma, and :func:`tuned_preset_document`
turns the result into a preset that ``extends`` the base with the best values. Attributes are imported
lazily.
"""

from __future__ import annotations

from zplug._lazy import lazy_attributes

_LAZY = {
    "Choice": "zplug.tune.space",
    "Range": "zplug.tune.space",
    "parse_dimension": "zplug.tune.space",
    "parse_space": "zplug.tune.space",
    "LayerGroups": "zplug.tune.groups",
    "layer_group_preset": "zplug.tune.groups",
    "Objective": "zplug.tune.objective",
    "TrialLog": "zplug.tune.log",
    "TrialRecord": "zplug.tune.log",
    "TuneResult": "zplug.tune.search",
    "tune": "zplug.tune.search",
    "tuned_preset_document": "zplug.tune.search",
}

__getattr__ = lazy_attributes("zplug.tune", _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = tuple(sorted(_LAZY))
