"""The LRP engine: rules replace gradients through per-call autograd functions."""

from zplug.engine.attach import attach_rules
from zplug.engine.function import Binding, LayerCall
from zplug.engine.ops import LayerOp, override_params, params_of
from zplug.engine.stabilize import stabilize

__all__ = ("Binding", "LayerCall", "LayerOp", "attach_rules", "override_params", "params_of", "stabilize")
