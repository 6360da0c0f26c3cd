"""Registers zplug's built-in rules through the plugin hook (like any third-party plugin)."""

from zplug.hookspecs import hookimpl
from zplug.rules.attention import FusedAttention
from zplug.rules.elementwise import Pass, ReLUBetaSmooth, ReLUDeconvNet, ReLUGuidedBackprop
from zplug.rules.lrp import AlphaBeta, Epsilon, Flat, Gamma, Norm, WSquare, ZBox, ZPlus
from zplug.rules.recompute import Recompute
from zplug.rules.transformer import FrozenScale, Product, Softmax


@hookimpl
def zplug_register_rules():
    """Register the LRP, element-wise and transformer rules."""
    return [
        Epsilon,
        ZPlus,
        AlphaBeta,
        Gamma,
        ZBox,
        Flat,
        WSquare,
        Pass,
        Norm,
        ReLUDeconvNet,
        ReLUGuidedBackprop,
        ReLUBetaSmooth,
        FrozenScale,
        Softmax,
        Product,
        Recompute,
        FusedAttention,
    ]
