"""Registers zplug's built-in attributors through the plugin hook (like any third-party plugin)."""

from zplug.attributors.gradient import Gradient
from zplug.attributors.integrated_gradients import IntegratedGradients
from zplug.attributors.occlusion import Occlusion
from zplug.attributors.smoothgrad import SmoothGrad
from zplug.hookspecs import hookimpl


@hookimpl
def zplug_register_attributors():
    """Register gradient, smoothgrad, integrated_gradients and occlusion."""
    return [Gradient, SmoothGrad, IntegratedGradients, Occlusion]
