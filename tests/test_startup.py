"""What the commands import: those that need no model start without torch, the demo without torchvision.

Each command runs in a fresh interpreter, as a user runs it (installed plugins loaded), and reports
the modules it imported (``sys.modules`` at exit). The timing itself is measured by
``benchmarks/startup.py``, not here.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import zplug

ROOT = Path(zplug.__file__).resolve().parent
PRESET = ROOT / "preset" / "presets" / "epsilon_gamma_box.toml"
#: Runs ``python -m zplug ARGS`` and writes the names of the imported modules to OUT at exit.
PROBE = """
import atexit, json, runpy, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["zplug", *sys.argv[2:]]
runpy.run_module("zplug", run_name="__main__", alter_sys=True)
"""


def imported(tmp_path: Path, *args: str) -> tuple[set[str], subprocess.CompletedProcess]:
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZPLUG_")}
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], capture_output=True, text=True, env=env,
                          timeout=300)
    return set(json.loads(out.read_text())), done


TORCH_FREE = {
    "help": ("--help",),
    "presets": ("presets",),
    "check": ("check", str(PRESET)),
    "plugins": ("plugins",),
    "missing input": ("explain", "/nonexistent/image.png", "--demo"),
    "bad option": ("explain", "--demo", "--resize", "-5"),
    "unknown parameter": ("explain", "--demo", "--param", "gamma=0.5"),
}


@pytest.mark.parametrize("args", TORCH_FREE.values(), ids=TORCH_FREE.keys())
def test_commands_that_need_no_model_do_not_import_torch(tmp_path, args):
    modules, done = imported(tmp_path, *args)
    assert "torch" not in modules, done.stderr
    if args[0] == "explain":  # it failed with the one-line message, not a traceback
        assert done.returncode == 2 and done.stderr.startswith("zplug: error: ") and done.stderr.count("\n") == 1


def test_check_reports_a_bad_preset_without_torch(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('schema = 1\n[[layer_map]]\ntypes = ["convolutoin"]\nrule = { name = "gamma", gamma = -1 }\n')
    modules, done = imported(tmp_path, "check", str(bad))
    assert "torch" not in modules
    assert done.returncode == 2 and "layer_map[0].types[0]: unknown layer type 'convolutoin'" in done.stderr


def test_check_validates_rule_parameters_without_torch(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('schema = 1\n[[layer_map]]\ntypes = ["convolution"]\nrule = { name = "gamma", gamma = -1 }\n')
    modules, done = imported(tmp_path, "check", str(bad))
    assert "torch" not in modules
    assert done.stderr.strip() == (
        f"zplug: error: {bad}: layer_map[0].rule: rule 'gamma': parameter 'gamma' must be a number >= 0 (got -1)"
    )


def test_explain_demo_imports_neither_torchvision_nor_dynamo(tmp_path):
    modules, done = imported(tmp_path, "explain", "--demo", "--preset", "epsilon_plus_flat", "--out",
                             str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr
    assert "torch" in modules  # the probe sees what the command imported
    assert {"torchvision", "torch._dynamo"}.isdisjoint(modules)


def _code_strings(tree: ast.AST) -> list[str]:
    """String constants that are not docstrings."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


def test_core_code_knows_nothing_of_torchvision():
    """Knowledge of torchvision's models lives in the zplug-torchvision plugin (hooks), not in zplug."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        if any("torchvision" in text for text in names + _code_strings(tree)):
            found.append(str(path.relative_to(ROOT)))
    assert found == []
