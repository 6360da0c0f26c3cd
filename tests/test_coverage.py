"""Coverage: every operation from the input to the output, and whether a rule covers it.

The analysis is checked against an independent account of the same backward pass, the conservation
ledger: an operation the analysis calls covered must not leak relevance, and the uncovered ones
are where the relevance goes missing.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import zplug
from zplug.coverage import Coverage, treatment_table
from zplug.demo.model import DemoNet
from zplug.errors import CoverageError, CoverageWarning, SpecError
from zplug.layers import Sum


# -- models ------------------------------------------------------------------------------------------
class Gated(nn.Module):
    """A functional gate ``x * sigmoid(x)`` between two ruled layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(x))
        x = x * torch.sigmoid(x)
        return self.fc(self.flatten(self.pool(x)))


class Project(nn.Module):
    """A custom layer with a weight, written with ``@``: no preset knows it."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class WithCustomHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.relu = nn.ReLU()
        self.head = Project(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.fc(x)))


class TinyViT(nn.Module):
    """Patch embedding, one ``nn.MultiheadAttention`` with a residual connection, a class token read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.add = Sum()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).flatten(2).transpose(1, 2)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(self.add(h, a)[:, 0])


class Untraceable(nn.Module):
    """Python control flow on a tensor value (torch.fx cannot trace it) and a residual addition."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 5)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.fc1(x))
        if h.sum() > -1e9:  # always true, but fx cannot know
            h = h + x
        return self.fc2(h)


class Constants(nn.Module):
    """Operations on parameters, buffers and shapes only: none of them is on the path from the input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.relu = nn.ReLU()
        self.out = nn.Linear(4, 2)
        self.position = nn.Parameter(torch.randn(4))
        self.register_buffer("keep", torch.tensor([1.0, 1.0, 0.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = torch.tanh(self.position) * 2  # parameters only
        mask = (self.keep * torch.ones_like(x)) > 0.5  # a buffer and the shape of the input
        h = self.relu(self.fc(x.view(x.size(0), -1))) + offset
        return self.out(h.masked_fill(~mask, 0.0))


class Excite(nn.Module):
    """Squeeze-excitation written by hand: ``x * sigmoid(fc(mean(x)))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(self.pool(x)))


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.se = Excite(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se(self.relu(self.conv(x)))


class Residual(nn.Module):
    """Residual blocks with squeeze-excitation: ``residual_sum`` installs a traced forward that inlines them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.blocks = nn.Sequential(Block(4), Block(4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.blocks(self.relu(self.stem(x))))))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()


def coverage_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CoverageWarning)]


@pytest.fixture
def untraced(monkeypatch):
    """Make torch.fx fail for the coverage analysis, so that the autograd graph of the first call is used."""
    from zplug.coverage import fx

    def refuse(model, rules, table):
        raise fx.FxTraceError(f"torch.fx cannot trace {type(model).__name__} (refused by the test)")

    monkeypatch.setattr(fx, "trace_steps", refuse)


# -- warnings ----------------------------------------------------------------------------------------
def test_functional_gate_warns_mul_and_sigmoid_and_leaks(registry):
    model, x = Gated().eval(), torch.rand(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        e = zplug.explain(model, x, preset="epsilon_plus", ledger=True)
    assert coverage_warnings(record) == [
        "(model): sigmoid (no rule): not covered by preset 'epsilon_plus', its plain gradient is used",
        "(model): mul (no rule): not covered by preset 'epsilon_plus', its plain gradient is used",
    ]
    uncovered = [(op.where, op.op) for op in e.mapping.coverage.uncovered]
    assert uncovered == [("", "sigmoid"), ("", "mul")]
    # the ledger sees the same thing independently: the gate is where relevance leaks
    [leak] = [entry for entry in e.ledger.leaks() if abs(entry.lost) > 1e-6]
    assert abs(leak.lost) > 1e-3


def test_custom_module_without_rule_warns_and_names_it(registry):
    model, x = WithCustomHead().eval(), torch.randn(4, 6)
    with pytest.warns(CoverageWarning) as record:
        e = zplug.explain(model, x, preset="epsilon_plus", ledger=True)
    assert coverage_warnings(record) == [
        "head: matmul (no rule): not covered by preset 'epsilon_plus', its plain gradient is used"
    ]
    assert e.mapping.unmapped == ("head",)
    # relevance is not conserved: the custom layer passes its plain gradient, as the ledger shows
    [leak] = [entry for entry in e.ledger.leaks() if abs(entry.lost) > 1e-6]
    assert leak.name.startswith("head (Project)") and abs(leak.lost) > 1e-3


def test_plain_cnn_under_epsilon_plus_warns_nothing_and_leaks_nothing(registry):
    model, x = cnn(), torch.rand(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = zplug.explain(model, x, preset="epsilon_plus", ledger=True)
    coverage = e.mapping.coverage
    assert coverage.method == "torch.fx" and coverage.uncovered == () and coverage.idle == ()
    assert {op.op for op in coverage.operations if op.kind == "linear"} == {"MaxPool2d", "Flatten"}
    assert abs(e.ledger.leaked) < 1e-6 * abs(e.ledger.output)


@pytest.mark.parametrize("preset", sorted(zplug.PluginRegistry(autoload=False).presets))
def test_every_preset_on_the_demo_model_is_covered(registry, preset):
    params = {"low": 0.0, "high": 1.0} if preset == "epsilon_gamma_box" else {}
    model, x = DemoNet().eval(), torch.rand(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        e = zplug.explain(model, x, preset=preset, ledger=True, **params)
    coverage = e.mapping.coverage
    if coverage.gradient_method:
        assert preset in ("beta_smooth", "deconvnet", "guided_backprop")
        assert "coverage: not checked" in str(e.mapping)
    else:
        assert coverage.uncovered == () and coverage.idle == ()
        assert abs(e.ledger.leaked) < 1e-6 * abs(e.ledger.output)


def test_warnings_come_once_per_mapping(registry):
    model, x = Gated().eval(), torch.rand(1, 3, 8, 8)
    mapping = zplug.resolve(model, "epsilon_plus")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            zplug.explain(model, x, mapping=mapping)
        with mapping.applied(model):
            model(x)
    assert len(coverage_warnings(record)) == 2


def test_first_call_warns_once_and_only_after_a_call_with_gradients(registry, untraced):
    model = Gated().eval()
    mapping = zplug.resolve(model, "epsilon_plus")
    assert mapping.coverage.pending == "torch.fx cannot trace Gated (refused by the test)"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with mapping.applied(model):
            model(torch.rand(1, 3, 8, 8))  # no input requires a gradient: nothing to follow yet
            assert coverage_warnings(record) == [] and not mapping.coverage.analysed
            model(torch.rand(1, 3, 8, 8, requires_grad=True))
            model(torch.rand(1, 3, 8, 8, requires_grad=True))
    assert mapping.coverage.method == "autograd graph of the first call"
    assert [m.split(":")[1] for m in coverage_warnings(record)] == [" sigmoid (no rule)", " mul (no rule)"]
    assert not model._forward_hooks and not model._forward_pre_hooks and not model.conv._forward_hooks


# -- strict ------------------------------------------------------------------------------------------
GATED_ERROR = (
    "preset 'epsilon_plus' does not cover 2 operation(s) of Gated: (model): sigmoid (no rule); (model): mul (no rule); "
    "give them rules (a preset entry for the module, or a canonizer that routes the operation through a module) or run "
    "without strict to get warnings instead"
)


def test_strict_raises_the_list(registry):
    model = Gated().eval()
    with pytest.raises(CoverageError) as info:
        zplug.resolve(model, "epsilon_plus", strict=True)
    assert str(info.value) == GATED_ERROR
    with pytest.raises(CoverageError, match=f"^{re.escape(GATED_ERROR)}$"):
        zplug.explain(model, torch.rand(1, 3, 8, 8), preset="epsilon_plus", strict=True)
    assert isinstance(info.value, zplug.ModelMismatchError)


def test_strict_raises_at_the_first_call_when_fx_cannot_trace(registry, untraced):
    model = Gated().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CoverageError, match=f"^{re.escape(GATED_ERROR)}$"):
        zplug.explain(model, torch.rand(1, 3, 8, 8), preset="epsilon_plus", strict=True)
    # the model comes back as it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and "forward" not in module.__dict__


# -- what is listed ----------------------------------------------------------------------------------
def test_multihead_attention_out_proj_holds_a_rule_but_is_never_called(registry):
    model, x = TinyViT().eval(), torch.rand(2, 3, 16, 16)
    with pytest.warns(CoverageWarning):  # without the multihead_attention canonizer "auto" would choose
        e = zplug.explain(model, x, preset="epsilon_plus", ledger=True, canonizers=[])
    coverage = e.mapping.coverage
    assert coverage.method == "autograd graph of the first call"  # torch.fx cannot trace into the attention
    assert [m.describe() for m in coverage.idle] == ["attn.out_proj (NonDynamicallyQuantizableLinear, epsilon)"]
    assert e.mapping["attn.out_proj"].rule_name == "epsilon"
    assert "attn.out_proj" not in [entry.name for entry in e.ledger.entries if entry.kind == "layer"]
    assert {op.where for op in coverage.uncovered} == {"attn"}
    text = str(e.mapping)
    assert "  holds a rule but is never called (its parent computes without calling it):" in text
    assert "    attn.out_proj (NonDynamicallyQuantizableLinear, epsilon)" in text


def test_operations_keep_the_module_they_were_written_in_through_residual_sum(registry):
    model, x = Residual().eval(), torch.rand(2, 3, 8, 8)
    with pytest.warns(CoverageWarning) as record:
        e = zplug.explain(model, x, preset="epsilon_plus", ledger=True)
    assert [c.name for c in e.mapping.canonizers] == ["residual_sum"]
    assert "forward" not in model.__dict__  # the traced forward was removed again
    expected = [f"blocks.{i}.se: {op} (no rule)" for i in (0, 1) for op in ("sigmoid", "mul")]
    assert [op.describe() for op in e.mapping.coverage.uncovered] == expected
    assert coverage_warnings(record) == [
        f"{line}: not covered by preset 'epsilon_plus', its plain gradient is used" for line in expected
    ]
    leaks = [entry for entry in e.ledger.leaks() if abs(entry.lost) > 1e-6]
    assert len(leaks) == 2  # one region per gate


def test_operations_on_constants_only_are_not_on_the_path(registry, untraced):
    model, x = Constants().eval(), torch.randn(3, 4)
    traced = zplug.resolve(model, "epsilon_plus", canonizers=[])  # torch.fx is refused: analyse the first call
    traced.analyse_coverage(model, x)
    for coverage in (traced.coverage,):
        ops = {op.op: op.kind for op in coverage.operations if not op.module}
        assert "tanh" not in ops and "mul" not in ops and "gt" not in ops
        assert ops["add"] == "linear" and ops["masked_fill"] == "linear"
        assert coverage.uncovered == ()


def test_operations_on_constants_only_are_not_on_the_fx_path(registry):
    coverage = zplug.resolve(Constants().eval(), "epsilon_plus", canonizers=[]).coverage
    assert coverage.method == "torch.fx"
    ops = {op.op: op.kind for op in coverage.operations if not op.module}
    assert ops == {"view": "linear", "add": "linear", "masked_fill": "linear"}


INPUTS = {"WithCustomHead": (2, 6), "Constants": (2, 4)}


@pytest.mark.parametrize(
    "build", [Gated, WithCustomHead, DemoNet, cnn, Constants, Residual], ids=lambda b: b.__name__
)
@pytest.mark.parametrize("canonizers", [None, []], ids=["auto", "none"])
def test_fx_and_first_call_find_the_same_operations(registry, monkeypatch, build, canonizers):
    import weakref

    import zplug.coverage
    from zplug.coverage import fx

    model = build().eval()
    x = torch.rand(INPUTS.get(build.__name__, (2, 3, 16, 16)))
    traced = zplug.resolve(model, "epsilon_plus", canonizers=canonizers).coverage
    monkeypatch.setattr(zplug.coverage, "_cache", weakref.WeakKeyDictionary())
    monkeypatch.setattr(fx, "trace_steps", lambda *a: (_ for _ in ()).throw(fx.FxTraceError("refused")))
    mapping = zplug.resolve(model, "epsilon_plus", canonizers=canonizers)
    assert mapping.coverage.pending == "refused"
    first_call = mapping.analyse_coverage(model, x)

    def key(coverage: Coverage):
        return (
            sorted((op.where, op.op, op.calls) for op in coverage.uncovered),
            sorted(m.name for m in coverage.idle),
            sorted(m.name for m in coverage.lossy),
        )

    assert first_call.method == "autograd graph of the first call"
    assert key(first_call) == key(traced)


def test_lossy_rules_are_a_note_where_the_output_is_not_rectified(registry):
    rectified = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    # z+ on the last layer: its output (the model's) is not rectified
    mapping = zplug.resolve(rectified, "excitation_backprop")
    assert [m.describe() for m in mapping.coverage.lossy] == ["2 (Linear, zplus)"]
    assert "  lossy (a note): the rule loses relevance where the layer's output is not rectified:" in str(mapping)
    # what the note means: an output with only negative contributions passes nothing on
    with torch.no_grad():
        rectified[2].weight.copy_(-rectified[2].weight.abs())
        rectified[2].bias.zero_()
    x = torch.rand(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        e = zplug.explain(rectified, x, lambda out: torch.ones_like(out), preset="excitation_backprop", ledger=True)
    assert e.ledger.layer("2").lost == pytest.approx(e.ledger.layer("2").relevance_in)
    # alpha-beta with beta = 0 is z+; with beta = 1 it is not listed
    from zplug.coverage import analyse

    plain = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    rules = {"0": zplug.rule("alpha_beta", alpha=1.0, beta=0.0), "1": zplug.rule("alpha_beta", alpha=2.0, beta=1.0)}
    assert [m.describe() for m in analyse(plain, rules).lossy] == ["0 (Linear, alpha_beta)"]


def test_gradient_methods_are_not_checked(registry):
    model, x = Gated().eval(), torch.rand(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        e = zplug.explain(model, x, preset="guided_backprop")
    assert e.mapping.coverage == Coverage(gradient_method=True)
    assert str(e.mapping).splitlines()[-1] == (
        "coverage: not checked: the rules modify the gradient (not LRP), so operations without a rule keep their "
        "plain gradient by design"
    )


def test_str_shows_the_section_and_to_toml_does_not(registry):
    mapping = zplug.resolve(Gated().eval(), "epsilon_plus")
    lines = str(mapping).splitlines()
    start = lines.index("coverage (torch.fx): 7 operation(s) from the input to the output, 2 not covered")
    assert lines[start:] == [
        "coverage (torch.fx): 7 operation(s) from the input to the output, 2 not covered",
        "  not covered (the plain gradient is used, which is not LRP):",
        "    (model): sigmoid (no rule)",
        "    (model): mul (no rule)",
        "  rules: 3 module call(s)",
        "  linear (the plain gradient is exact): AdaptiveMaxPool2d x1, Flatten x1",
    ]
    assert "coverage" not in mapping.to_toml() and "sigmoid" not in mapping.to_toml()


def test_analysis_is_cached_per_model_structure(registry):
    model = cnn()
    first, second = zplug.resolve(model, "epsilon_plus"), zplug.resolve(model, "epsilon_plus")
    assert first.coverage is second.coverage
    other = zplug.resolve(model, "epsilon_plus", canonizers=[])
    assert other.coverage is not first.coverage


# -- canonizers --------------------------------------------------------------------------------------
def test_auto_canonizers_say_why_the_trace_failed(registry):
    model, x = Untraceable().eval(), torch.randn(3, 5)
    mapping = zplug.resolve(model, "epsilon_plus")
    note = (
        "canonizers = 'auto' could not look for residual additions and BatchNorm pairs: torch.fx cannot trace "
        "Untraceable (TraceError: symbolically traced variables cannot be used as inputs to control flow); list the "
        "canonizers the model needs instead (canonizers=[...] or the preset's canonizers)"
    )
    assert mapping.notes == (note,)
    assert f"canonizers: none\nnote: {note}\n" in str(mapping)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        zplug.explain(model, x, mapping=mapping)
    assert coverage_warnings(record) == [
        note,
        "(model): add (no rule): not covered by preset 'epsilon_plus', its plain gradient is used",
    ]


def test_explain_accepts_canonizers(registry):
    model, x = cnn(), torch.rand(2, 3, 8, 8)
    e = zplug.explain(model, x, preset="epsilon_plus", canonizers=[])
    assert e.mapping.canonizers == ()
    expected = zplug.explain(model, x, mapping=zplug.resolve(model, "epsilon_plus", canonizers=[])).relevance
    assert torch.equal(e.relevance, expected)
    merged = zplug.explain(model, x, preset="epsilon_plus", canonizers=["merge_batchnorm"])
    assert [c.name for c in merged.mapping.canonizers] == ["merge_batchnorm"]
    with pytest.raises(SpecError, match=r"^canonizers= goes with preset= \(a mapping= brings its own canonizers\)$"):
        zplug.explain(model, x, mapping=e.mapping, canonizers=[])


# -- plugins -----------------------------------------------------------------------------------------
class Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def test_a_plugin_declares_a_module_linear(registry):
    from zplug.coverage.treatments import Treatment

    model = nn.Sequential(nn.Linear(3, 3), Double(), nn.Linear(3, 2))
    before = zplug.resolve(model, "epsilon_plus").coverage
    assert [op.describe() for op in before.uncovered] == ["1: mul (no rule)"]

    import types

    plugin = types.ModuleType("doubling")
    plugin.zplug_register_op_treatments = zplug.hookimpl(
        lambda: {Double: Treatment(covered=True, summary="a test says it is fine")}
    )
    registry.register(plugin, "doubling")
    after = zplug.resolve(model, "epsilon_plus").coverage
    assert after.uncovered == ()
    assert [(op.where, op.op, op.kind, op.detail) for op in after.operations if op.kind != "rule"] == [
        ("1", "Double", "linear", "a test says it is fine")
    ]


def test_treatment_table_classifies_by_operands(registry):
    table = treatment_table()
    assert table.classify("add", 2).covered is False  # two tensors: the gradient copies relevance to both
    assert table.classify("add", 1).covered is True  # a constant: relevance passes to the tensor
    assert table.classify("mul", 1).covered is False  # a scaling changes the relevance by the factor
    assert table.classify("cat", 3).covered is True
    assert table.classify("softmax", 1).covered is False
