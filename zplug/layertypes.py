"""Built-in layer types: the abstract kinds that presets select layers by.

They follow Zennit's groups. ``isinstance`` decides membership, so subclasses of the
listed classes belong to the same kinds. Plugins add classes to a kind (or new kinds)
through ``zplug_register_layer_types``.
"""

from __future__ import annotations

import torch.nn as nn

from zplug.hookspecs import hookimpl
from zplug.layers import Sum

CONVOLUTION = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
LINEAR = (nn.Linear,)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
ACTIVATION = (
    nn.ELU, nn.Hardshrink, nn.Hardsigmoid, nn.Hardtanh, nn.Hardswish, nn.LeakyReLU, nn.LogSigmoid, nn.PReLU,
    nn.ReLU, nn.ReLU6, nn.RReLU, nn.SELU, nn.CELU, nn.GELU, nn.Sigmoid, nn.SiLU, nn.Softplus, nn.Softshrink,
    nn.Softsign, nn.Tanh, nn.Tanhshrink, nn.Threshold,
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
        "sum": (Sum,),
    }
