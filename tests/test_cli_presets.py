"""``zplug presets``, ``zplug check`` and ``zplug mapping``: as a user runs them (a subprocess of the
installed ``zplug`` script), and every error case in-process through ``zplug.cli.main``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zplug.cli import main

ROOT = Path(__file__).resolve().parent.parent
ZPLUG = Path(sys.prefix) / "bin" / "zplug"
BAD = ROOT / "tests" / "bad_specs"

MODELS_PY = """
import torch.nn as nn

def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)
    )

def not_a_model():
    return 42
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    (folder / "cli_models.py").write_text(MODELS_PY)
    environment = dict(os.environ, PYTHONPATH=str(folder), ZPLUG_DISABLE_PLUGIN_AUTOLOAD="1", OMP_NUM_THREADS="1")
    return environment


def zplug(env, *args, cwd=ROOT):
    if not ZPLUG.exists():
        pytest.skip(f"{ZPLUG} is not installed (pip install -e .)")
    return subprocess.run([str(ZPLUG), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_presets_lists_the_builtins(env):
    result = zplug(env, "presets")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sorted(names) and {"epsilon_gamma_box", "epsilon_plus", "beta_smooth", "deconvnet"} <= set(names)
    assert any(line.startswith("epsilon_plus ") and "z+ on convolutions" in line for line in lines)


def test_check_valid_and_invalid(env, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('schema = 1\n[[layer_map]]\ntypes = ["linear"]\nrule = "epsilon"\n')
    result = zplug(env, "check", str(good), "epsilon_plus")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{good}: ok (good: 1 entries)", "epsilon_plus: ok (epsilon_plus: 6 entries)"]

    bad = BAD / "unknown_rule.toml"
    result = zplug(env, "check", str(good), "tests/bad_specs/unknown_rule.toml")
    assert result.returncode == 2
    expected = bad.read_text().splitlines()[0].removeprefix("# expect: ").split(" known: ")[0]
    [line] = result.stderr.splitlines()  # one line, no traceback
    assert line.startswith(f"zplug: error: tests/bad_specs/unknown_rule.toml: {expected} known: alpha_beta, ")


def test_check_reports_every_bad_file(registry, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    files = ["tests/bad_specs/missing_schema.toml", "tests/bad_specs/syntax_unclosed_array.toml"]
    assert main(["check", *files]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "zplug: error: tests/bad_specs/missing_schema.toml: missing key 'schema' "
        "(add 'schema = 1' at the top of the file)",
        "zplug: error: tests/bad_specs/syntax_unclosed_array.toml: invalid TOML: Unclosed array (at line 5, column 1)",
    ]


def test_mapping_table(env):
    result = zplug(env, "mapping", "cli_models:cnn", "--preset", "epsilon_gamma_box",
                   "--param", "low=-3", "--param", "high=3", "--param", "gamma=0.5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("preset 'epsilon_gamma_box' on Sequential: ")
    rows = {line.split()[0]: line.split() for line in lines if line[:1].isdigit()}
    assert rows["0"][:3] == ["0", "Conv2d", "zbox"] and rows["0"][-1] == "first_map[0]"
    assert rows["1"][:3] == ["1", "BatchNorm2d", "pass"]
    assert rows["4"][:3] == ["4", "LazyLinear", "epsilon"]
    assert "low=-3, high=3" in lines[[ln[:1] for ln in lines].index("0")]


def test_mapping_toml_loads_back(env, tmp_path, registry, capsys, monkeypatch):
    result = zplug(env, "mapping", "cli_models:cnn", "--preset", "epsilon_plus", "--param", 'zero_params=["bias"]',
                   "--toml")
    assert result.returncode == 0, result.stderr
    explicit = tmp_path / "explicit.toml"
    explicit.write_text(result.stdout)
    assert 'zero_params = ["bias"]' in result.stdout
    monkeypatch.syspath_prepend(env["PYTHONPATH"])
    assert main(["mapping", "cli_models:cnn", "--preset", str(explicit), "--toml"]) == 0
    assert capsys.readouterr().out.replace("'explicit'", "'epsilon_plus'") == result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["cli_models:cnn", "--preset", "excitation_backprop", "--strict"],
         "zplug: error: preset 'excitation_backprop' gives no rule to 1 module(s) with parameters: 1 (BatchNorm2d); "),
        (["cli_models:cnn", "--preset", "epsilon_gamma_box"],
         "zplug: error: zplug:presets/epsilon_gamma_box.toml: params.low: preset 'epsilon_gamma_box' needs a value "),
        (["cli_models:cnn", "--preset", "epsilon_plus", "--param", "gama=1"],
         "zplug: error: preset 'epsilon_plus' has no parameter 'gama' (known: epsilon, stabilizer, zero_params)"),
        (["cli_models:cnn", "--preset", "epsilon_plus", "--param", "gamma"],
         "zplug: error: --param 'gamma': expected KEY=VALUE, e.g. --param gamma=0.5"),
        (["vgg99", "--preset", "epsilon_plus"],
         "zplug: error: unknown model 'vgg99' ("),
        (["cli_models:nope", "--preset", "epsilon_plus"],
         "zplug: error: module 'cli_models' has no 'nope' (model 'cli_models:nope')"),
        (["cli_models:not_a_model", "--preset", "epsilon_plus"],
         "zplug: error: model factory 'cli_models:not_a_model' returned int, not a torch.nn.Module"),
        (["cli_models:cnn", "--preset", "tests/bad_specs/rule_negative_gamma.toml"],
         "zplug: error: tests/bad_specs/rule_negative_gamma.toml: layer_map[0].rule: rule 'gamma': parameter 'gamma' "
         "must be a number >= 0 (got -1.0)"),
    ],
    ids=["strict", "required", "unknown-param", "bad-param", "unknown-model", "no-factory", "not-a-model", "bad-file"],
)
def test_mapping_errors_are_one_line(env, registry, capsys, monkeypatch, args, message):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(env["PYTHONPATH"])
    assert main(["mapping", *args]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(message), line
