"""The coverage section and warnings on the command line: ``zplug mapping`` and ``zplug explain``."""

from __future__ import annotations

import pytest

from zplug.cli import main

MODELS_PY = """
import torch
import torch.nn as nn


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        x = self.relu(self.conv(x))
        x = x * torch.sigmoid(x)
        return self.fc(self.flatten(self.pool(x)))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = self.embed(x).flatten(2).transpose(1, 2)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(a[:, 0])


def gated():
    return Gated()


def attention():
    return Attention()
"""

GATE_WARNINGS = [
    "zplug: warning: (model): sigmoid (no rule): not covered by preset 'epsilon_plus', its plain gradient is used",
    "zplug: warning: (model): mul (no rule): not covered by preset 'epsilon_plus', its plain gradient is used",
]


@pytest.fixture
def models(tmp_path, monkeypatch, registry):
    (tmp_path / "coverage_models.py").write_text(MODELS_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_mapping_prints_the_section_and_warns(models, capsys):
    assert main(["mapping", "coverage_models:gated", "--preset", "epsilon_plus"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == GATE_WARNINGS
    assert out.splitlines()[-6:] == [
        "coverage (torch.fx): 7 operation(s) from the input to the output, 2 not covered",
        "  not covered (the plain gradient is used, which is not LRP):",
        "    (model): sigmoid (no rule)",
        "    (model): mul (no rule)",
        "  rules: 3 module call(s)",
        "  linear (the plain gradient is exact): AdaptiveMaxPool2d x1, Flatten x1",
    ]


def test_mapping_toml_is_unaffected(models, capsys):
    assert main(["mapping", "coverage_models:gated", "--preset", "epsilon_plus", "--toml"]) == 0
    out, err = capsys.readouterr()
    assert "coverage" not in out and out.startswith("schema = 1\n")
    assert err.splitlines() == GATE_WARNINGS


def test_mapping_strict_fails_with_the_list(models, capsys):
    assert main(["mapping", "coverage_models:gated", "--preset", "epsilon_plus", "--strict"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "zplug: error: preset 'epsilon_plus' does not cover 2 operation(s) of Gated: (model): sigmoid (no rule); "
        "(model): mul (no rule); give them rules (a preset entry for the module, or a canonizer that routes the "
        "operation through a module) or run without strict to get warnings instead"
    ]


def test_mapping_of_an_untraceable_model_analyses_one_call(models, capsys):
    # Without canonizers: "auto" would choose multihead_attention, which makes out_proj a called module.
    preset = models / "plain.toml"
    preset.write_text('schema = 1\nextends = "epsilon_plus"\ncanonizers = []\n')
    assert main(["mapping", "coverage_models:attention", "--preset", str(preset), "--input-shape", "3,16,16"]) == 0
    out, err = capsys.readouterr()
    assert "coverage (autograd graph of the first call): " in out
    assert "  holds a rule but is never called (its parent computes without calling it):\n" \
           "    attn.out_proj (NonDynamicallyQuantizableLinear, epsilon)" in out
    assert all(line.startswith("zplug: warning: attn: ") for line in err.splitlines()) and err


def test_mapping_of_an_untraceable_model_without_a_shape_says_so(models, capsys):
    assert main(["mapping", "coverage_models:attention", "--preset", "epsilon_plus"]) == 0
    out, err = capsys.readouterr()
    assert "coverage: not analysed yet: torch.fx cannot trace Attention (TraceError: " in out
    [line] = err.splitlines()
    assert line.startswith("zplug: warning: the coverage of preset 'epsilon_plus' on Attention is not known: ")
    assert line.endswith("; pass --input-shape C,H,W to analyse the autograd graph of one call")
    assert main(["mapping", "coverage_models:attention", "--preset", "epsilon_plus", "--strict"]) == 2
    assert capsys.readouterr().err.startswith("zplug: error: the coverage of preset 'epsilon_plus' on Attention ")


@pytest.mark.parametrize("shape", ["3,x", "0,2", ""])
def test_bad_input_shape(models, capsys, shape):
    assert main(["mapping", "coverage_models:gated", "--preset", "epsilon_plus", f"--input-shape={shape}"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"zplug: error: --input-shape {shape!r}: expected positive integers separated by commas, e.g. 3,224,224"
    ]


def test_explain_warns_once_and_strict_exits_2(models, capsys, tmp_path):
    from zplug.demo.samples import samples_dir

    args = ["explain", str(samples_dir()), "--model", "coverage_models:gated", "--preset", "epsilon_plus",
            "--batch-size", "2", "--sheet-limit", "0", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    assert capsys.readouterr().err.splitlines() == GATE_WARNINGS  # once, not once per batch
    args[-1] = str(tmp_path / "strict")  # a second run may not write into the first run's folder
    assert main([*args, "--strict"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("zplug: error: preset 'epsilon_plus' does not cover 2 operation(s) of Gated: ")
