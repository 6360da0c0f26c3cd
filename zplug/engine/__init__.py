"""The LRP engine: rules replace gradients through per-call autograd functions."""

from zplug.engine.attach import attach_rules
from zplug.engine.function import Binding, LayerCall, Observer, binding_of
from zplug.engine.identity import is_identity, mark_identity
from zplug.engine.ops import LayerOp, override_params, params_of
from zplug.engine.stabilize import stabilize

__all__ = (
    "Binding",
    "LayerCall",
    "LayerOp",
    "Observer",
    "attach_rules",
    "binding_of",
    "is_identity",
    "mark_identity",
    "override_params",
    "params_of",
    "stabilize",
)
