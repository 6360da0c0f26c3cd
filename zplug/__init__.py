"""zplug: Layer-wise Relevance Propagation for PyTorch, declarative and open to plugins.

The public API is imported lazily, so ``import zplug`` stays cheap (no torch import, no
plugin scan) until a function is used.
"""

from __future__ import annotations

from zplug._lazy import lazy_attributes
from zplug.errors import (
    CanonizerError,
    CommandError,
    CoverageError,
    CoverageWarning,
    DistributedError,
    InputError,
    ModelMismatchError,
    NotTraceableError,
    OutputError,
    OutputExistsError,
    PlotUnavailableError,
    PluginConflictError,
    PluginLoadError,
    RelevanceError,
    SpecError,
    TrialLogError,
    UnknownNameError,
    ZplugError,
)
from zplug.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "attach_rules": "zplug.engine.attach",
    "default_registry": "zplug.registry",
    "evaluate": "zplug.evaluation",
    "explain": "zplug.explanation",
    "Explanation": "zplug.explanation",
    "LayerMapping": "zplug.mapping",
    "load_preset": "zplug.preset.loading",
    "Preset": "zplug.preset.records",
    "presets": "zplug.preset.loading",
    "resolve": "zplug.resolver",
    "PluginRegistry": "zplug.registry",
    "Rule": "zplug.rules.base",
    "rule": "zplug.rules",
    "Sum": "zplug.layers",
    "stabilize": "zplug.engine.stabilize",
}


__getattr__ = lazy_attributes("zplug", _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = (
    "CanonizerError",
    "CommandError",
    "CoverageError",
    "CoverageWarning",
    "DistributedError",
    "Explanation",
    "InputError",
    "LayerMapping",
    "ModelMismatchError",
    "NotTraceableError",
    "OutputError",
    "OutputExistsError",
    "PlotUnavailableError",
    "TrialLogError",
    "PluginConflictError",
    "PluginLoadError",
    "PluginRegistry",
    "Preset",
    "RelevanceError",
    "Rule",
    "SpecError",
    "Sum",
    "UnknownNameError",
    "ZplugError",
    "__version__",
    "attach_rules",
    "evaluate",
    "explain",
    "default_registry",
    "load_preset",
    "presets",
    "resolve",
    "hookimpl",
    "rule",
    "stabilize",
)
