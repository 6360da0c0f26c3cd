"""Every rule on every layer type it applies to gives Zennit 0.5.1's relevance.

Each case builds one module, computes the relevance of a random input for a random upper
relevance once with a Zennit rule registered on the module and once with the equivalent
zplug rule attached, and compares the two: at most 1e-6 relative (to the largest entry) in
float64, 1e-4 in float32.
"""

from __future__ import annotations

import pytest
import torch
import zennit.layer
import zennit.rules as zr

import zplug.layers
import zplug.rules as pr
from zplug.engine import attach_rules

RTOL = {torch.float64: 1e-6, torch.float32: 1e-4}
DTYPES = [torch.float64, torch.float32]
SIGNS = ["signed", "non_negative"]


def _linear(bias):
    return torch.nn.Linear(6, 5, bias=bias), (3, 6)


def _conv1d(bias):
    return torch.nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2, bias=bias), (2, 4, 11)


def _conv2d(bias):
    return torch.nn.Conv2d(3, 4, (3, 2), stride=(1, 2), padding=(1, 0), bias=bias), (2, 3, 6, 7)


def _conv3d(bias):
    return torch.nn.Conv3d(2, 4, 2, stride=1, padding=1, dilation=(1, 2, 1), groups=2, bias=bias), (2, 2, 4, 5, 4)


def _conv_transpose1d(bias):
    return torch.nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, bias=bias), (2, 4, 5)


def _conv_transpose2d(bias):
    module = torch.nn.ConvTranspose2d(2, 3, (2, 3), stride=(2, 1), padding=(0, 1), dilation=(1, 2), bias=bias)
    return module, (2, 2, 4, 5)


def _conv_transpose3d(bias):
    module = torch.nn.ConvTranspose3d(2, 4, 2, stride=2, padding=1, output_padding=(1, 0, 1), groups=2, bias=bias)
    return module, (2, 2, 3, 3, 3)


LINEAR_LAYERS = {
    "linear": _linear,
    "conv1d": _conv1d,
    "conv2d": _conv2d,
    "conv3d": _conv3d,
    "conv_transpose1d": _conv_transpose1d,
    "conv_transpose2d": _conv_transpose2d,
    "conv_transpose3d": _conv_transpose3d,
}

# (zplug rule factory, zennit rule factory, takes zero_params)
LINEAR_RULES = {
    "epsilon": (lambda zp: pr.Epsilon(epsilon=1e-6, zero_params=zp), lambda zp: zr.Epsilon(1e-6, zero_params=zp)),
    "epsilon_large": (lambda zp: pr.Epsilon(epsilon=0.25, zero_params=zp), lambda zp: zr.Epsilon(0.25, zero_params=zp)),
    "zplus": (lambda zp: pr.ZPlus(zero_params=zp), lambda zp: zr.ZPlus(zero_params=zp)),
    "alpha2_beta1": (
        lambda zp: pr.AlphaBeta(alpha=2.0, beta=1.0, zero_params=zp),
        lambda zp: zr.AlphaBeta(2.0, 1.0, zero_params=zp),
    ),
    "alpha1_beta0": (
        lambda zp: pr.AlphaBeta(alpha=1.0, beta=0.0, zero_params=zp),
        lambda zp: zr.AlphaBeta(1.0, 0.0, zero_params=zp),
    ),
    "gamma": (lambda zp: pr.Gamma(gamma=0.25, zero_params=zp), lambda zp: zr.Gamma(0.25, zero_params=zp)),
    "gamma_large": (
        lambda zp: pr.Gamma(gamma=1.5, stabilizer=1e-3, zero_params=zp),
        lambda zp: zr.Gamma(1.5, stabilizer=1e-3, zero_params=zp),
    ),
    "zbox": (
        lambda zp: pr.ZBox(low=-3.0, high=3.0, zero_params=zp),
        lambda zp: zr.ZBox(-3.0, 3.0, zero_params=zp),
    ),
    "flat": (lambda zp: pr.Flat(zero_params=zp), lambda zp: zr.Flat(zero_params=zp)),
    "wsquare": (lambda zp: pr.WSquare(zero_params=zp), lambda zp: zr.WSquare(zero_params=zp)),
    "norm": (lambda zp: pr.Norm(), lambda zp: zr.Norm()),
}


def _max_rel_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp(min=torch.finfo(expected.dtype).tiny)
    return float(((actual - expected).abs().max() / scale).item())


def _make_input(shape, dtype, sign):
    x = torch.randn(shape, dtype=dtype)
    return x.abs() if sign == "non_negative" else x


def _zennit_relevance(module, zennit_rule, x, relevance_out):
    handles = zennit_rule.register(module)
    try:
        inp = x.clone().requires_grad_()
        out = module(inp)
        (relevance,) = torch.autograd.grad(out, inp, relevance_out)
    finally:
        handles.remove()
    return relevance


def _zplug_relevance(module, rule, x, relevance_out):
    with attach_rules(module, {"": rule}):
        inp = x.clone().requires_grad_()
        out = module(inp)
        (relevance,) = torch.autograd.grad(out, inp, relevance_out)
    return relevance


def _compare(module, zplug_rule, zennit_rule, x, dtype):
    module = module.to(dtype)
    with torch.no_grad():
        relevance_out = torch.randn_like(module(x))
    expected = _zennit_relevance(module, zennit_rule, x, relevance_out)
    actual = _zplug_relevance(module, zplug_rule, x, relevance_out)
    assert actual.shape == expected.shape
    assert torch.isfinite(expected).all()
    difference = _max_rel_diff(actual, expected)
    assert difference <= RTOL[dtype], f"max relative difference {difference:.3g}"
    return difference


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("sign", SIGNS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layer", LINEAR_LAYERS)
@pytest.mark.parametrize("rule", LINEAR_RULES)
def test_linear_layer_rules_match_zennit(rule, layer, bias, sign, dtype):
    module, shape = LINEAR_LAYERS[layer](bias)
    make_zplug, make_zennit = LINEAR_RULES[rule]
    x = _make_input(shape, dtype, sign)
    _compare(module, make_zplug(()), make_zennit(None), x, dtype)


@pytest.mark.parametrize("layer", LINEAR_LAYERS)
@pytest.mark.parametrize("rule", [name for name in LINEAR_RULES if name != "norm"])
def test_zero_params_bias_matches_zennit(rule, layer):
    module, shape = LINEAR_LAYERS[layer](True)
    with torch.no_grad():
        module.bias.uniform_(-1.0, 1.0)  # large enough to matter
    make_zplug, make_zennit = LINEAR_RULES[rule]
    x = _make_input(shape, torch.float64, "signed")
    _compare(module, make_zplug("bias"), make_zennit(["bias"]), x, torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("layer", ["linear", "conv2d", "conv_transpose2d", "conv3d"])
@pytest.mark.parametrize("bounds", ["float", "channel", "full", "larger_batch"])
def test_zbox_bounds_match_zennit(bounds, layer, dtype):
    module, shape = LINEAR_LAYERS[layer](True)
    channels = shape[1]
    channel_shape = (1, channels) + (1,) * (len(shape) - 2)
    if bounds == "float":
        low, high = -1.5, 2.0
    elif bounds == "channel":
        low = -1.0 - torch.rand(channel_shape, dtype=dtype)
        high = 1.0 + torch.rand(channel_shape, dtype=dtype)
    elif bounds == "full":
        low = -1.0 - torch.rand(shape, dtype=dtype)
        high = 1.0 + torch.rand(shape, dtype=dtype)
    else:  # made for a batch of 5; Zennit (and zplug) use the first entries
        low = -1.0 - torch.rand((5, *shape[1:]), dtype=dtype)
        high = 1.0 + torch.rand((5, *shape[1:]), dtype=dtype)
    x = _make_input(shape, dtype, "signed")
    _compare(module, pr.ZBox(low=low, high=high), zr.ZBox(low, high), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize(
    "rule",
    {
        "stabilizer_large": (pr.ZPlus(stabilizer=0.5), zr.ZPlus(stabilizer=0.5)),
        "stabilizer_zero_inputs": (pr.Epsilon(epsilon=1e-6), zr.Epsilon(1e-6)),
        "callable": (
            pr.Epsilon(epsilon=lambda z: z + 0.1 * z.sign()),
            zr.Epsilon(lambda z: z + 0.1 * z.sign()),
        ),
    }.items(),
    ids=lambda item: item[0],
)
def test_stabilizer_variants_match_zennit(rule, dtype):
    _, (zplug_rule, zennit_rule) = rule
    module, shape = _conv2d(True)
    x = _make_input(shape, dtype, "signed")
    x[:, :, :3] = 0.0  # exact zeros in the input: some outputs equal the bias only
    _compare(module, zplug_rule, zennit_rule, x, dtype)


POOLS = {
    "avg_pool1d": (lambda: torch.nn.AvgPool1d(3, stride=2, padding=1), (2, 3, 9)),
    "avg_pool2d": (lambda: torch.nn.AvgPool2d(2), (2, 3, 6, 6)),
    "avg_pool2d_pad": (lambda: torch.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (2, 3, 7, 6)),
    "adaptive_avg_pool1d": (lambda: torch.nn.AdaptiveAvgPool1d(4), (2, 3, 9)),
    "adaptive_avg_pool2d": (lambda: torch.nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 5, 7)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("sign", SIGNS)
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize(
    "rule",
    {"norm": (pr.Norm(), zr.Norm()), "epsilon": (pr.Epsilon(epsilon=0.01), zr.Epsilon(0.01))}.items(),
    ids=lambda item: item[0],
)
def test_pooling_rules_match_zennit(rule, pool, sign, dtype):
    _, (zplug_rule, zennit_rule) = rule
    make_module, shape = POOLS[pool]
    x = _make_input(shape, dtype, sign)
    _compare(make_module(), zplug_rule, zennit_rule, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("sign", SIGNS)
@pytest.mark.parametrize("dim", [-1, 1])
def test_norm_on_stacked_sum_matches_zennit(dim, sign, dtype):
    x = _make_input((3, 4, 2), dtype, sign)
    with torch.no_grad():
        relevance_out = torch.randn_like(x.sum(dim))
    expected = _zennit_relevance(zennit.layer.Sum(dim), zr.Norm(), x, relevance_out)
    actual = _zplug_relevance(zplug.layers.Sum(dim), pr.Norm(), x, relevance_out)
    assert _max_rel_diff(actual, expected) <= RTOL[dtype]


ELEMENTWISE_RULES = {
    "pass": (pr.Pass(), zr.Pass()),
    "relu_deconvnet": (pr.ReLUDeconvNet(), zr.ReLUDeconvNet()),
    "relu_guided_backprop": (pr.ReLUGuidedBackprop(), zr.ReLUGuidedBackprop()),
    "relu_beta_smooth": (pr.ReLUBetaSmooth(), zr.ReLUBetaSmooth()),
    "relu_beta_smooth_2": (pr.ReLUBetaSmooth(beta_smooth=2.0), zr.ReLUBetaSmooth(beta_smooth=2.0)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("module", ["relu", "tanh", "relu_inplace"])
@pytest.mark.parametrize("rule", ELEMENTWISE_RULES)
def test_elementwise_rules_match_zennit(rule, module, dtype):
    zplug_rule, zennit_rule = ELEMENTWISE_RULES[rule]
    make = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "relu_inplace": lambda: torch.nn.ReLU(inplace=True)}[module]
    x = _make_input((3, 4, 5), dtype, "signed")
    x[0, 0, :2] = 0.0
    _compare(make(), zplug_rule, zennit_rule, x, dtype)


UNUSUAL = {
    "conv2d_unbatched": (lambda: torch.nn.Conv2d(2, 3, 3, padding=1), (2, 5, 5)),
    "conv1d_unbatched": (lambda: torch.nn.Conv1d(2, 3, 3, stride=2), (2, 7)),
    "conv_transpose2d_unbatched": (lambda: torch.nn.ConvTranspose2d(2, 3, 3, stride=2), (2, 3, 3)),
    "conv2d_same": (lambda: torch.nn.Conv2d(2, 3, (3, 2), padding="same"), (2, 2, 5, 5)),
    "conv2d_valid": (lambda: torch.nn.Conv2d(2, 3, 3, padding="valid"), (2, 2, 5, 5)),
    "conv2d_reflect": (lambda: torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 2, 5, 5)),
    "conv1d_circular": (lambda: torch.nn.Conv1d(2, 3, 3, padding=2, padding_mode="circular"), (2, 2, 6)),
    "linear_unbatched": (lambda: torch.nn.Linear(4, 3), (4,)),
    "linear_sequence": (lambda: torch.nn.Linear(4, 3), (2, 5, 4)),
    "batch_norm_eval": (lambda: torch.nn.BatchNorm2d(2).eval(), (2, 2, 3, 3)),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("layer", UNUSUAL)
@pytest.mark.parametrize("rule", ["epsilon", "zplus", "alpha2_beta1", "gamma", "zbox", "flat", "wsquare"])
def test_unusual_layer_configurations_match_zennit(rule, layer, dtype):
    make_module, shape = UNUSUAL[layer]
    make_zplug, make_zennit = LINEAR_RULES[rule]
    x = _make_input(shape, dtype, "signed")
    _compare(make_module(), make_zplug(()), make_zennit(None), x, dtype)
