"""Rules: how a layer distributes the relevance of its outputs over its inputs."""

from zplug.rules.attention import FusedAttention
from zplug.rules.base import (
    Absorption,
    Rule,
    make_rule,
    names,
    non_negative,
    non_negative_or_callable,
    number,
    number_or_tensor,
    parameter,
    parameter_info,
    positive_int,
    relevance_total,
    to_names,
)
from zplug.rules.elementwise import Pass, ReLUBetaSmooth, ReLUDeconvNet, ReLUGuidedBackprop
from zplug.rules.lrp import AlphaBeta, Epsilon, Flat, Gamma, Norm, WSquare, ZBox, ZPlus
from zplug.rules.recompute import Recompute
from zplug.rules.transformer import FrozenScale, Product, Softmax


def rule(name: str, **params):
    """Build a registered rule by name: ``rule("epsilon", epsilon=0.25)``.

    Raises
    ------
    UnknownNameError
        If no plugin registered ``name`` (the message suggests the nearest name).
    SpecError
        If a parameter is unknown, missing or invalid.
    """
    from zplug.registry import default_registry

    return make_rule(default_registry().rules[name], params)


__all__ = (
    "Absorption",
    "AlphaBeta",
    "Epsilon",
    "Flat",
    "FrozenScale",
    "FusedAttention",
    "Gamma",
    "Norm",
    "Pass",
    "Product",
    "ReLUBetaSmooth",
    "ReLUDeconvNet",
    "ReLUGuidedBackprop",
    "Recompute",
    "Rule",
    "Softmax",
    "WSquare",
    "ZBox",
    "ZPlus",
    "make_rule",
    "names",
    "non_negative",
    "non_negative_or_callable",
    "number",
    "number_or_tensor",
    "parameter",
    "parameter_info",
    "positive_int",
    "relevance_total",
    "rule",
    "to_names",
)
