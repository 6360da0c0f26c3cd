"""Generic canonizers: BatchNorm merging, attribute canonizers, composition, residual_sum, auto."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zplug.canonizers import (
    AttributeCanonizer,
    CanonizerError,
    CompositeCanonizer,
    MergeBatchNorm,
    NamedMergeBatchNorm,
    ResidualSum,
    applied_canonizers,
    auto_canonizers,
    merged_params,
)
from zplug.engine import attach_rules, params_of
from zplug.errors import SpecError, ZplugError
from zplug.layers import Sum
from zplug.rules import Epsilon, Norm, Pass


def random_bn(bn: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        if bn.weight is not None:
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=g))
    return bn.eval()


def state(model: nn.Module):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    for name, module in model.named_modules():
        assert "forward" not in module.__dict__, name
        assert not module._forward_hooks and not module._forward_pre_hooks, name
        assert params_of(module) == dict(module._parameters), name


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


class ConvBN(nn.Module):
    """BatchNorm registered *before* the convolution that feeds it, and a functional op elsewhere."""

    def __init__(self):
        super().__init__()
        self.norm = random_bn(nn.BatchNorm2d(8))
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.norm2 = random_bn(nn.BatchNorm2d(8), 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.norm(self.conv(x)))
        x = self.norm2(torch.relu(self.conv2(x)))  # ReLU between: must not be merged
        return self.head(x.mean((2, 3)))


# -- BatchNorm merging ------------------------------------------------------------------------
def test_pairs_follow_execution_not_registration():
    model = ConvBN().eval()
    pairs, how = MergeBatchNorm().pairs(model)
    assert how == "traced"
    assert pairs == [(("conv",), "norm")]
    assert MergeBatchNorm().describe(model) == ["merge BatchNorm2d 'norm' into Conv2d 'conv'"]


def test_output_unchanged_and_model_restored():
    model = ConvBN().eval()
    x = torch.randn(2, 3, 8, 8)
    before, expected = state(model), model(x)
    with MergeBatchNorm().applied(model):
        assert rel(model(x), expected) < 1e-5
        assert params_of(model.conv)["weight"] is not model.conv.weight
    assert_same_state(model, before)
    assert torch.equal(model(x), expected)


@pytest.mark.parametrize(
    "layer, bn, shape",
    [
        (nn.Linear(6, 5), nn.BatchNorm1d(5), (4, 6)),
        (nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5), (4, 6)),
        (nn.Conv1d(4, 6, 3, groups=2), nn.BatchNorm1d(6), (2, 4, 9)),
        (nn.Conv3d(2, 4, 2), nn.BatchNorm3d(4), (1, 2, 4, 4, 4)),
        (nn.ConvTranspose2d(6, 9, 3, stride=2, groups=3), nn.BatchNorm2d(9), (2, 6, 5, 5)),
        (nn.ConvTranspose2d(4, 6, 3, groups=2, bias=False), nn.BatchNorm2d(6), (2, 4, 5, 5)),
        (nn.ConvTranspose1d(4, 4, 3, groups=4), nn.BatchNorm1d(4, affine=False), (2, 4, 7)),
    ],
)
def test_merge_is_exact_for_every_layer_kind(layer, bn, shape):
    model = nn.Sequential(layer, random_bn(bn)).double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    before, expected = state(model), model(x)
    with MergeBatchNorm().applied(model):
        assert rel(model(x), expected) < 1e-12
    assert_same_state(model, before)
    # The merged parameters alone reproduce the pair (checks the ConvTranspose group layout).
    params = merged_params(layer, model[1])
    fused = copy.deepcopy(layer)
    with torch.no_grad():
        fused.weight.copy_(params["weight"])
        fused.bias = nn.Parameter(params["bias"])
    assert rel(fused(x), expected) < 1e-12


def test_realistic_eps_float32_within_1e5():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), random_bn(nn.BatchNorm2d(16)), nn.ReLU(),
                          nn.Conv2d(16, 16, 3), random_bn(nn.BatchNorm2d(16), 2)).eval()
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    with MergeBatchNorm().applied(model):
        assert rel(model(x), expected) < 1e-5


def test_rules_see_the_merged_layer():
    # LRP on (conv -> BN) merged equals LRP on one convolution holding the merged parameters.
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), random_bn(nn.BatchNorm2d(4)), nn.ReLU()).double().eval()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    params = merged_params(model[0], model[1])
    fused = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).double()
    with torch.no_grad():
        fused[0].weight.copy_(params["weight"])
        fused[0].bias.copy_(params["bias"])

    def relevance(net, rules):
        xg = x.clone().requires_grad_()
        with attach_rules(net, rules):
            out = net(xg)
            return torch.autograd.grad(out, xg, out)[0]

    with MergeBatchNorm().applied(model):
        ours = relevance(model, {"0": Epsilon(epsilon=0.1), "1": Pass(), "2": Pass()})
    reference = relevance(fused, {"0": Epsilon(epsilon=0.1), "1": Pass()})
    assert rel(ours, reference) < 1e-10


def test_training_mode_batchnorm_is_an_error():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).train()
    with pytest.raises(CanonizerError, match="training mode.*model.eval"):
        with MergeBatchNorm().applied(model):
            pass
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_shared_output_and_reused_layers_are_not_merged():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.bn = random_bn(nn.BatchNorm1d(4))

        def forward(self, x):
            y = self.lin(x)
            return self.bn(y) + y  # y is used twice: merging would change the second use

    assert MergeBatchNorm().pairs(Shared().eval())[0] == []


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.bn = random_bn(nn.BatchNorm1d(4))

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = x * 2
        return self.bn(self.lin(x)) + x


def test_untraceable_falls_back_to_registration_order():
    model = Untraceable().eval()
    pairs, how = MergeBatchNorm().pairs(model)
    assert (pairs, how) == ([(("lin",), "bn")], "registration order")
    assert "torch.fx cannot trace" in MergeBatchNorm().describe(model)[0]
    x = torch.randn(3, 4)
    expected = model(x)
    with MergeBatchNorm().applied(model):
        assert rel(model(x), expected) < 1e-5


def test_named_merge():
    model = ConvBN().eval()
    x = torch.randn(1, 3, 8, 8)
    before, expected = state(model), model(x)
    canonizer = NamedMergeBatchNorm(pairs=[[["conv"], "norm"]])
    assert canonizer.pairs == ((("conv",), "norm"),)
    with canonizer.applied(model):
        assert rel(model(x), expected) < 1e-5
        assert model.norm.forward is not None and "forward" in model.norm.__dict__
    assert_same_state(model, before)


@pytest.mark.parametrize(
    "pairs, message",
    [
        ("conv", "list of"),
        ([["conv", "norm", "x"]], "item 0"),
        ([[[], "norm"]], "item 0"),
    ],
)
def test_named_merge_bad_parameters(pairs, message):
    with pytest.raises(SpecError, match=message):
        NamedMergeBatchNorm(pairs=pairs)


@pytest.mark.parametrize(
    "pairs, message",
    [
        ([[["nope"], "norm"]], "no module 'nope'"),
        ([[["conv"], "head"]], "not a BatchNorm"),
        ([[["norm"], "norm2"]], "can be merged into Linear"),
        ([[["head"], "norm"]], "4 output channels"),
        ([[["conv"], "norm"], [["conv"], "norm2"]], "paired with both"),
    ],
)
def test_named_merge_bad_pairs(pairs, message):
    model = ConvBN().eval()
    before = state(model)
    with pytest.raises(CanonizerError, match=message):
        with NamedMergeBatchNorm(pairs=pairs).applied(model):
            pass
    assert_same_state(model, before)


def test_restored_after_exception():
    model = ConvBN().eval()
    before = state(model)
    with pytest.raises(KeyboardInterrupt):
        with applied_canonizers(model, [MergeBatchNorm(), ResidualSum()]):
            with attach_rules(model, {"conv": Epsilon()}):
                raise KeyboardInterrupt
    assert_same_state(model, before)


# -- attribute canonizers and composition -----------------------------------------------------
def test_attribute_canonizer_restores_instance_attributes_and_children():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    own = model[0].forward
    model[0].__dict__["forward"] = own  # a pre-existing instance attribute (Zennit would delete it)
    model[0].tag = "mine"
    extra = Sum()

    def attributes(name, module):
        if isinstance(module, nn.Linear):
            return {"forward": lambda x: x * 0, "tag": "theirs", "extra": extra}
        return None

    canonizer = AttributeCanonizer(attributes=attributes)
    assert canonizer.describe(model) == ["0 (Linear): replace extra, forward, tag"]
    with canonizer.applied(model):
        assert model[0].tag == "theirs"
        assert dict(model.named_modules())["0.extra"] is extra
        assert torch.equal(model(torch.ones(1, 2)), torch.zeros(1, 2))
    assert model[0].__dict__["forward"] is own and model[0].tag == "mine"
    assert "extra" not in model[0]._modules


def test_attribute_canonizer_refuses_to_shadow_parameters():
    model = nn.Linear(2, 2)
    with pytest.raises(CanonizerError, match="parameter or buffer"):
        with AttributeCanonizer(attributes=lambda n, m: {"weight": 1}).applied(model):
            pass
    assert "weight" not in model.__dict__


def test_composition_reverts_in_reverse_order():
    model = nn.Linear(2, 2)
    seen = []

    def patch(value):
        def attributes(name, module):
            seen.append(module.__dict__.get("marker"))
            return {"marker": value}

        return AttributeCanonizer(attributes=attributes)

    composite = CompositeCanonizer(canonizers=[patch("a"), patch("b")])
    with composite.applied(model):
        assert model.marker == "b"
    assert seen == [None, "a"] and "marker" not in model.__dict__


# -- residual_sum ------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin1 = nn.Linear(width, width)
        self.lin2 = nn.Linear(width, width)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.lin2(self.relu(self.lin1(x)))
        out += x  # in-place residual
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.inp = nn.Linear(4, width)
        self.block1 = Block(width)
        self.block2 = Block(width)
        self.out = nn.Linear(width, 3)

    def forward(self, x):
        h = self.inp(x)
        h = torch.add(self.block1(h), h) * 0.5 + 1.0  # torch.add of two tensors; scalar ops untouched
        h = self.block2(h)
        return self.out(h + h.size(0))  # tensor + int (from shape arithmetic): not a residual


def lrp(model, x, canonizers, zero_bias=True):
    xg = x.clone().requires_grad_()
    with applied_canonizers(model, canonizers):
        rules = {}
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                rules[name] = Epsilon(epsilon=1e-9, zero_params=("bias",) if zero_bias else ())
            elif isinstance(module, nn.ReLU):
                rules[name] = Pass()
            elif isinstance(module, Sum):
                rules[name] = Norm(stabilizer=1e-12)
        with attach_rules(model, rules):
            out = model(xg)
            (relevance,) = torch.autograd.grad(out, xg, torch.eye(3)[[0]] * out.detach())
    return relevance, out


def test_residual_sum_routes_tensor_additions_only():
    model = TinyResNet()
    found = ResidualSum().describe(model)
    assert [line.split(":")[0] for line in found] == ["<model>", "block1", "block2"]  # module order
    assert found[0] == "<model>: route 'add = block1 + inp' through a Sum module"
    with ResidualSum().applied(model):
        names = [n for n, m in model.named_modules() if isinstance(m, Sum)]
    assert sorted(names) == ["block1.residual_sum", "block2.residual_sum", "residual_sum"]


def test_residual_sum_output_and_conservation():
    torch.manual_seed(3)

    class NoBias(TinyResNet):
        def forward(self, x):
            h = self.inp(x)
            h = self.block2(torch.add(self.block1(h), h))
            return self.out(h)

    model = NoBias().double()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    x = torch.randn(1, 4, dtype=torch.float64)
    before, expected = state(model), model(x)
    relevance, out = lrp(model, x, [ResidualSum()])
    assert rel(out, expected) < 1e-12
    assert float(relevance.sum()) == pytest.approx(float(out[0, 0].detach()), rel=1e-6)
    assert_same_state(model, before)
    inflated, _ = lrp(model, x, [])  # without the canonizer each residual copies the relevance
    assert float(inflated.sum()) != pytest.approx(float(out[0, 0].detach()), rel=1e-2)


def test_residual_sum_untraceable_model_says_why_and_what_to_do():
    model = Untraceable().eval()
    with pytest.raises(CanonizerError) as info:
        with ResidualSum().applied(model):
            pass
    message = str(info.value)
    assert isinstance(info.value, ZplugError)
    assert "torch.fx cannot trace Untraceable" in message and "zplug.Sum()(a, b)" in message
    assert "forward" not in model.__dict__


def test_residual_sum_with_merge_batchnorm_in_either_order():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = random_bn(nn.BatchNorm2d(4))

        def forward(self, x):
            return self.bn(self.conv(x)) + x

    model = Res().eval()
    x = torch.randn(1, 4, 5, 5)
    before, expected = state(model), model(x)
    for order in ([MergeBatchNorm(), ResidualSum()], [ResidualSum(), MergeBatchNorm()]):
        with applied_canonizers(model, order):
            assert rel(model(x), expected) < 1e-5
            assert "residual_sum" in dict(model.named_modules())
            assert "forward" in model.bn.__dict__
        assert_same_state(model, before)


# -- registration and auto ---------------------------------------------------------------------
def test_registered_and_suggested(registry):
    assert {"merge_batchnorm", "merge_batchnorm_named", "residual_sum"} <= set(registry.canonizers)
    assert registry.suggest_canonizers(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == []
    suggested = registry.suggest_canonizers(ConvBN().eval())
    assert [n for n, _, _ in suggested] == ["merge_batchnorm", "functional_pooling"]  # x.mean((2, 3))
    assert suggested[1][1] == "functional pooling or means in 1 module(s), e.g. '<model>'"
    suggested = registry.suggest_canonizers(TinyResNet())
    assert [n for n, _, _ in suggested] == ["residual_sum"]
    assert "3 tensor addition(s)" in suggested[0][1]
    assert [n for n, _, _ in registry.suggest_canonizers(Untraceable().eval())] == ["merge_batchnorm"]


def test_auto_drops_covered_suggestions(registry):
    import types

    from zplug import hookimpl

    class Family(CompositeCanonizer):
        name = "family"
        covers = ("merge_batchnorm",)

    plugin = types.SimpleNamespace(
        zplug_register_canonizers=hookimpl(lambda: [Family]),
        zplug_suggest_canonizers=hookimpl(lambda model: [("family", "a family model")]),
    )
    registry.register(plugin, "fam")
    chosen = auto_canonizers(ConvBN().eval(), registry)
    assert [(n, p) for n, _, p in chosen] == [("family", "fam"), ("functional_pooling", "zplug")]
    assert [n for n, _, _ in auto_canonizers(TinyResNet(), registry)] == ["family", "residual_sum"]
