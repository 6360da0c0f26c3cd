"""The zplug plugin module (entry point ``transformers``): registrations and the model hooks.

Registering imports neither torch nor transformers (``zplug plugins`` and ``zplug presets`` stay
fast): classes are named by their dotted paths and matched once transformers is imported, which a
model of its classes implies. The model hooks answer from ``model.config.model_type``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zplug import hookimpl
from zplug_transformers.canonizers import CANONIZERS, MODEL_TYPES

if TYPE_CHECKING:
    import torch

_ACTIVATIONS = "transformers.activations."
#: Hugging Face's element-wise activations (``ACT2FN``) that are modules of its own: the identity rule.
ACTIVATIONS = tuple(
    _ACTIVATIONS + name
    for name in ("GELUActivation", "NewGELUActivation", "PytorchGELUTanh", "FastGELUActivation",
                 "QuickGELUActivation", "AccurateGELUActivation", "ClippedGELUActivation", "MishActivation",
                 "LinearActivation")
)  # fmt: skip
#: RMSNorms: ``frozen_scale`` once the family canonizer routes them through ``F.rms_norm``.
RMS_NORMS = (
    "transformers.models.llama.modeling_llama.LlamaRMSNorm",
    "transformers.models.qwen2.modeling_qwen2.Qwen2RMSNorm",
    "transformers.models.qwen3.modeling_qwen3.Qwen3RMSNorm",
    "transformers.models.gemma3.modeling_gemma3.Gemma3RMSNorm",
)
#: GPT-2's ``Conv1D`` is ``x @ W + b``: a linear layer with its weight transposed.
CONV1D = "transformers.pytorch_utils.Conv1D"
ROTATE = "zplug_transformers.layers.Rotate"
ATTENTION = "zplug_transformers.layers.Attention"


def model_type(model: Any) -> str | None:
    """``model.config.model_type`` of a Hugging Face model (``None`` for other objects)."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    return kind if isinstance(kind, str) else None


@hookimpl
def zplug_register_canonizers():
    """Register the family canonizers."""
    return list(CANONIZERS)


@hookimpl
def zplug_register_layer_types():
    """Conv1D as a linear layer, RMSNorms as normalisation, Hugging Face's activations, the rotary embedding.

    The rotary embedding (:class:`~zplug_transformers.layers.Rotate`) is a product with constants, so
    it joins ``gate``: the ``product`` rule hands its only carrying operand LRP-epsilon's share. The
    attention core (:class:`~zplug_transformers.layers.Attention`) is an ``attention`` layer.
    """
    return {
        "linear": (CONV1D,),
        "affine": (CONV1D,),
        "normalization": RMS_NORMS,
        "activation": ACTIVATIONS,
        "nonlinearity": ACTIVATIONS,
        "gate": (ROTATE,),
        "attention": (ATTENTION,),
    }


@hookimpl
def zplug_suggest_canonizers(model: torch.nn.Module):
    """Suggest the family canonizer by ``model.config.model_type``."""
    family = MODEL_TYPES.get(model_type(model))
    if family is None:
        return None
    return [(family.name, f"the model is a {family.family} (config.model_type '{model_type(model)}')")]


@hookimpl
def zplug_explain_inputs(model: torch.nn.Module, inputs: Any):
    """Explain token ids of a Hugging Face model of a supported family: :func:`zplug_transformers.explain_tokens`."""
    if model_type(model) not in MODEL_TYPES:
        return None
    import torch

    if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point() and not inputs.is_complex():
        from zplug_transformers.tokens import explain_tokens

        return explain_tokens
    return None


@hookimpl
def zplug_register_commands():
    """``zplug explain-text`` (the module imports neither torch nor transformers until it runs)."""
    return {"explain-text": "zplug_transformers.cli"}
