"""Canonizers that rewrite module by module: children stay modules, rewrites are checked and compose."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import zplug
from zplug.canonizers import CanonizerError, FunctionalPooling, MergeBatchNorm, ResidualSum, applied_canonizers
from zplug.engine import attach_rules
from zplug.layers import Mean, Sum
from zplug.rules import Epsilon, Norm, Pass

DT = torch.float64


def state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_restored(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all("forward" not in m.__dict__ for m in model.modules())


def zero_biases(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    return model


def relevance(model: nn.Module, x: torch.Tensor, rules_of) -> tuple[torch.Tensor, torch.Tensor]:
    """LRP with the rule ``rules_of(module)`` on each module (``None``: no rule); starts from the logit 0."""
    rules = {name: rule for name, m in model.named_modules() if (rule := rules_of(m)) is not None}
    xg = x.clone().requires_grad_()
    with attach_rules(model, rules):
        out = model(xg)
        seed = torch.zeros_like(out)
        seed[:, 0] = out[:, 0].detach()
        (grad,) = torch.autograd.grad(out, xg, seed)
    return grad, out.detach()


def epsilon_rules(module: nn.Module):
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return Epsilon(epsilon=1e-12)
    if isinstance(module, (Sum, Mean, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return Norm(stabilizer=1e-12)
    if isinstance(module, (nn.ReLU, Excite)):
        return Pass()  # the squeeze-excitation gate passes relevance to its input (Zennit's convention)
    return None


# -- residual blocks with squeeze-excitation ---------------------------------------------------------
class Excite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class ExciteBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.se = Excite(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.se(self.conv(x)))


class ExciteNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.blocks = nn.Sequential(ExciteBlock(4), ExciteBlock(4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.relu(self.stem(x)))), 1))


def test_residual_sum_keeps_squeeze_excitation_a_module_so_its_rule_runs():
    torch.manual_seed(0)
    model = zero_biases(ExciteNet()).to(DT).eval()
    x = torch.rand(2, 3, 6, 6, dtype=DT)
    before, expected = state(model), model(x)
    calls = []
    handles = [b.se.register_forward_hook(lambda *_: calls.append(1)) for b in model.blocks]
    with ResidualSum().applied(model):
        assert sorted(n for n, m in model.named_modules() if isinstance(m, Sum)) == [
            "blocks.0.residual_sum", "blocks.1.residual_sum"
        ]
        model(x)  # the first call also runs the original forward, for the check
        calls.clear()
        grad, out = relevance(model, x, epsilon_rules)
    for handle in handles:
        handle.remove()
    assert len(calls) == 2  # each gate ran as a module call, so its pass rule ran
    assert torch.allclose(out, expected, rtol=1e-12, atol=0)
    assert torch.allclose(grad.sum((1, 2, 3)), out[:, 0], rtol=1e-9)  # conserves
    assert_restored(model, before)


def test_residual_sum_describes_additions_per_module():
    model = ExciteNet()
    assert ResidualSum().describe(model) == [
        f"blocks.{i}: route 'add = x + se' through a Sum module" for i in (0, 1)
    ]


# -- a rewrite that changes the function is refused ------------------------------------------------
class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        h = self.lin(x)
        h = h * 2 if mode is None else h * 3  # torch.fx traces `mode` as a proxy: the else branch is fixed
        return h + x


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Branchy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_residual_sum_that_would_change_the_output_is_undone_and_refused():
    torch.manual_seed(0)
    model = Outer().to(DT)
    x = torch.rand(1, 4, dtype=DT)
    before, expected = state(model), model(x)
    with pytest.raises(CanonizerError) as info:
        with ResidualSum().applied(model):
            model(x)
    message = str(info.value)
    assert message.startswith(
        "residual_sum: the rewritten forward of 'inner' (Branchy) does not compute what the original computes "
        "(largest difference "
    )
    assert "Python control flow that torch.fx fixed while tracing" in message
    assert_restored(model, before)
    assert torch.equal(model(x), expected)


def test_explain_refuses_a_residual_rewrite_that_changes_the_output():
    torch.manual_seed(0)
    model = Outer().eval()
    with pytest.raises(CanonizerError, match="residual_sum: the rewritten forward of 'inner' \\(Branchy\\)"):
        zplug.explain(model, torch.rand(1, 4), target=0, preset="epsilon_plus", canonizers=["residual_sum"])
    assert all("forward" not in m.__dict__ for m in model.modules())


# -- functional pooling ----------------------------------------------------------------------------
class Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.avg_pool2d(h, 3, stride=1, padding=1, count_include_pad=False)
        h = F.max_pool2d(h, kernel_size=2)
        h = self.conv2(h)
        return self.fc(h.mean((2, 3)))


def test_functional_pooling_routes_pools_and_means_through_modules():
    torch.manual_seed(0)
    model = zero_biases(Pools()).to(DT)
    x = torch.rand(2, 3, 8, 8, dtype=DT)
    before, expected = state(model), model(x)
    assert FunctionalPooling().describe(model) == ["<model> (Pools): 2 pool, 1 mean as modules"]
    with FunctionalPooling().applied(model):
        added = {n: m for n, m in model.named_children() if n in ("pool", "pool_1", "mean")}
        assert [type(m) for m in added.values()] == [nn.AvgPool2d, nn.MaxPool2d, Mean]
        assert added["pool"].count_include_pad is False and added["pool"].padding == 1
        assert added["mean"].dim == (2, 3)
        grad, out = relevance(model, x, epsilon_rules)
    assert torch.allclose(out, expected, rtol=1e-12, atol=0)
    assert torch.allclose(grad.sum((1, 2, 3)), out[:, 0], rtol=1e-9)
    assert_restored(model, before)


def test_pooling_with_a_size_computed_from_the_input_stays_functional():
    class Global(nn.Module):
        def forward(self, x):
            return F.avg_pool2d(x, x.shape[2:])

    assert FunctionalPooling().describe(Global()) == []


EPSILON_PRESET = """
schema = 1
summary = "epsilon on every convolution and dense layer"
canonizers = "auto"

[params]
epsilon = 1e-12
stabilizer = 1e-12

[[layer_map]]
types = ["activation"]
rule = "pass"

[[layer_map]]
types = ["sum", "avgpool"]
rule = { name = "norm", stabilizer = { param = "stabilizer" } }

[[layer_map]]
types = ["affine"]
rule = { name = "epsilon", epsilon = { param = "epsilon" } }
"""


def test_auto_routes_functional_pooling_and_explain_conserves_without_warnings(tmp_path):
    torch.manual_seed(0)
    model = zero_biases(Pools()).to(DT).eval()
    x = torch.rand(1, 3, 8, 8, dtype=DT)
    preset = tmp_path / "epsilon.toml"
    preset.write_text(EPSILON_PRESET)
    with warnings.catch_warnings():
        warnings.simplefilter("error", zplug.CoverageWarning)
        e = zplug.explain(model, x, target=0, preset=str(preset))
    assert [c.name for c in e.mapping.canonizers] == ["functional_pooling"]
    assert e.mapping["pool"].rule_name == "norm" and e.mapping["mean"].rule_name == "norm"
    assert float(e.relevance.sum()) == pytest.approx(1.0, rel=1e-6)  # zplug seeds with the one-hot target


# -- composition -----------------------------------------------------------------------------------
class PoolResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x) + x, 2)


@pytest.mark.parametrize("order", [(ResidualSum, FunctionalPooling), (FunctionalPooling, ResidualSum)])
def test_rewrites_of_one_module_compose(order):
    torch.manual_seed(0)
    model = PoolResidual().to(DT)
    x = torch.rand(1, 3, 6, 6, dtype=DT)
    before, expected = state(model), model(x)
    with applied_canonizers(model, [cls() for cls in order]):
        children = {n: type(m) for n, m in model.named_children()}
        assert children == {"conv": nn.Conv2d, "residual_sum": Sum, "pool": nn.AvgPool2d}
        assert torch.allclose(model(x), expected, rtol=1e-12, atol=0)
    assert_restored(model, before)


# -- the ledger on in-place activations after merged BatchNorms ------------------------------------
def test_ledger_works_with_an_inplace_relu_after_a_merged_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    ).eval()
    x = torch.rand(1, 3, 6, 6)
    plain = zplug.explain(model, x, target=1, preset="epsilon_plus")
    with_ledger = zplug.explain(model, x, target=1, preset="epsilon_plus", ledger=True)
    assert [c.name for c in with_ledger.mapping.canonizers] == ["merge_batchnorm"]
    assert torch.allclose(with_ledger.relevance, plain.relevance, rtol=1e-6, atol=1e-9)
    rows = {entry.name for entry in with_ledger.ledger.entries if entry.kind == "layer"}
    assert {"0", "3", "8"} <= rows


def test_merge_batchnorm_then_residual_sum_sees_the_merged_forward():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) + x

    model = Res().eval()
    x = torch.rand(1, 3, 5, 5)
    expected = model(x)
    with applied_canonizers(model, [MergeBatchNorm(), ResidualSum()]):
        assert torch.allclose(model(x), expected, atol=1e-6)
        assert "forward" in model.bn.__dict__ and "residual_sum" in dict(model.named_children())
