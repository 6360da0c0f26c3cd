"""Attributors: how relevance for the inputs is computed from a (rule-modified) model."""

from zplug.attributors.base import Attributor, Session, make_attributor, resolve_target
from zplug.attributors.gradient import Gradient
from zplug.attributors.integrated_gradients import IntegratedGradients
from zplug.attributors.occlusion import Occlusion
from zplug.attributors.smoothgrad import SmoothGrad


def attributor(name: str, **params) -> Attributor:
    """Build a registered attributor by name: ``attributor("smoothgrad", n_iter=8)``.

    Raises
    ------
    UnknownNameError
        If no plugin registered ``name``.
    SpecError
        If a parameter is unknown or invalid.
    """
    from zplug.registry import default_registry

    return make_attributor(default_registry().attributors[name], params)


__all__ = (
    "Attributor",
    "Gradient",
    "IntegratedGradients",
    "Occlusion",
    "Session",
    "SmoothGrad",
    "attributor",
    "make_attributor",
    "resolve_target",
)
