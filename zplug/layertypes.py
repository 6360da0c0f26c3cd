"""Built-in layer types: the abstract kinds that presets select layers by.

They follow Zennit's groups. ``isinstance`` decides membership, so subclasses of the
listed classes belong to the same kinds. Plugins add classes to a kind (or new kinds)
through ``zplug_register_layer_types``. The classes are declared by their dotted paths, so
registering, listing and checking presets does not import torch (see
:mod:`zplug.preset.classes`).
"""

from __future__ import annotations

from zplug.hookspecs import hookimpl


def _paths(module: str, *names: str) -> tuple[str, ...]:
    return tuple(f"{module}.{name}" for name in names)


CONVOLUTION = _paths(
    "torch.nn", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"
)
LINEAR = _paths("torch.nn", "Linear")
BATCHNORM = _paths("torch.nn", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
AVGPOOL = _paths(
    "torch.nn", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d"
) + _paths("zplug.layers", "Mean")
MAXPOOL = _paths(
    "torch.nn", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d"
)
ACTIVATION = _paths(
    "torch.nn", "ELU", "Hardshrink", "Hardsigmoid", "Hardtanh", "Hardswish", "LeakyReLU", "LogSigmoid", "PReLU",
    "ReLU", "ReLU6", "RReLU", "SELU", "CELU", "GELU", "Sigmoid", "SiLU", "Softplus", "Softshrink", "Softsign",
    "Tanh", "Tanhshrink", "Threshold",
)  # fmt: skip
SUM = _paths("zplug.layers", "Sum")
#: Transformer operations (see zplug.functional_layers and docs/rules.md).
BILINEAR = _paths("zplug.layers", "MatMul")
SOFTMAX = _paths("torch.nn", "Softmax")
NORMALIZATION = _paths("torch.nn", "LayerNorm", "GroupNorm", "RMSNorm") + _paths("zplug.layers", "Normalize")
GATE = _paths("zplug.layers", "Mul")
#: Attention as one module (scores, softmax and context inside it), which ``recompute`` can sit on.
ATTENTION = _paths("zplug.layers", "ScaledDotProductAttention")
#: Lookup tables: their input is integer (token ids), so they start the differentiable path, never sit on it.
EMBEDDING = _paths("torch.nn", "Embedding", "EmbeddingBag")
#: Smooth element-wise non-linearities, which AttnLRP gives the identity rule (``pass``).
NONLINEARITY = _paths(
    "torch.nn", "GELU", "SiLU", "Mish", "Tanh", "Sigmoid", "Softplus", "ELU", "CELU", "SELU", "Hardswish",
    "Hardsigmoid",
)  # fmt: skip


@hookimpl
def zplug_register_layer_types():
    """Register Zennit's layer groups under lower-case names."""
    return {
        "convolution": CONVOLUTION,
        "linear": LINEAR,
        "affine": CONVOLUTION + LINEAR,
        "batchnorm": BATCHNORM,
        "avgpool": AVGPOOL,
        "maxpool": MAXPOOL,
        "activation": ACTIVATION,
        "sum": SUM,
        "bilinear": BILINEAR,
        "softmax": SOFTMAX,
        "normalization": NORMALIZATION,
        "gate": GATE,
        "attention": ATTENTION,
        "nonlinearity": NONLINEARITY,
        "embedding": EMBEDDING,
    }


__all__ = (
    "ACTIVATION", "ATTENTION", "AVGPOOL", "BATCHNORM", "BILINEAR", "CONVOLUTION", "EMBEDDING", "GATE", "LINEAR",
    "MAXPOOL", "NONLINEARITY", "NORMALIZATION", "SOFTMAX", "SUM",
)  # fmt: skip
