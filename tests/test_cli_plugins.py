"""``zplug plugins``: as a user runs it (the installed console script, in a subprocess), and in-process."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zplug.cli import main

ZPLUG = Path(sys.executable).parent / "zplug"
#: every plugin installed in this environment (zplug-example and others), to leave out where output is exact
INSTALLED = ",".join(ep.name for ep in importlib.metadata.entry_points(group="zplug"))
OTHERS = ",".join(ep.name for ep in importlib.metadata.entry_points(group="zplug") if ep.name != "example")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZPLUG_")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def run(*args: str, pythonpath: Path | None = None, disable: str = "") -> subprocess.CompletedProcess:
    env = clean_env(ZPLUG_DISABLE_PLUGINS=disable)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(ZPLUG), *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def fake_distribution(tmp_path):
    """An installed-looking distribution ``zplug-fake`` with three plugins: two clash, one is broken."""
    dist_info = tmp_path / "zplug_fake-1.2.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: zplug-fake\nVersion: 1.2\n")
    (dist_info / "entry_points.txt").write_text(
        "[zplug]\ngood = zplug_fake_good\ntwin = zplug_fake_twin\nbroken = zplug_fake_broken\n"
    )
    rule = (
        "import attrs\nfrom zplug import hookimpl\nfrom zplug.rules import Rule\n\n"
        "@attrs.frozen(kw_only=True)\nclass Epsilon2(Rule):\n    name = 'epsilon2'\n\n"
        "@hookimpl\ndef zplug_register_rules():\n    return [Epsilon2]\n"
    )
    (tmp_path / "zplug_fake_good.py").write_text(rule)
    (tmp_path / "zplug_fake_twin.py").write_text(rule)
    (tmp_path / "zplug_fake_broken.py").write_text("import zplug_missing_dependency\n")
    return tmp_path


def test_json_lists_the_example_plugin_and_its_rule_is_usable_by_name():
    result = run("plugins", "--json", disable=OTHERS)
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout) == [{
        "name": "example",
        "distribution": "zplug-example",
        "version": "0.1.0",
        "builtin": False,
        "modules": ["zplug_example.plugin"],
        "hooks": ["zplug_register_presets", "zplug_register_rules"],
        "registered": {"rules": ["epsilon_scaled"], "presets": ["example_epsilon_scaled"]},
        "error": None,
        "disabled": False,
        "extends_builtin": {},
    }] + [entry for entry in json.loads(result.stdout)[1:] if entry["disabled"]]
    assert sorted(entry["name"] for entry in json.loads(result.stdout)[1:]) == sorted(OTHERS.split(","))
    script = (
        "from zplug.rules import rule\n"
        "for r in (rule('epsilon_scaled', epsilon=0.5), rule('example:epsilon_scaled')):\n"
        "    print(type(r).__module__, r.name, r.params())\n"
    )
    env = clean_env(ZPLUG_DISABLE_PLUGINS=OTHERS)
    used = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    assert used.stdout == (
        "zplug_example.rules epsilon_scaled {'epsilon': 0.5}\nzplug_example.rules epsilon_scaled {'epsilon': 0.01}\n"
    )


def test_all_adds_the_builtin_plugin(registry, capsys):
    assert main(["plugins", "--all", "--json"]) == 0
    (builtin,) = json.loads(capsys.readouterr().out)
    assert (builtin["name"], builtin["builtin"], builtin["error"]) == ("zplug", True, None)
    assert "epsilon" in builtin["registered"]["rules"]


def test_without_plugins_says_so(registry, capsys):
    assert main(["plugins"]) == 0
    assert capsys.readouterr().out == "no third-party plugins installed (--all shows zplug's built-in plugin)\n"


def test_text_lists_distribution_what_was_registered_errors_and_conflicts(fake_distribution):
    result = run("plugins", pythonpath=fake_distribution, disable=INSTALLED)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "broken: zplug-fake 1.2\n"
        "  module: zplug_fake_broken\n"
        "  error: cannot load zplug_fake_broken: ModuleNotFoundError: No module named 'zplug_missing_dependency'\n"
        "good: zplug-fake 1.2\n"
        "  module: zplug_fake_good\n"
        "  rules: epsilon2\n"
        "twin: zplug-fake 1.2\n"
        "  module: zplug_fake_twin\n"
        "  rules: epsilon2\n"
        f"disabled (ZPLUG_DISABLE_PLUGINS): {', '.join(sorted(INSTALLED.split(',')))}\n"
        "conflict: rule 'epsilon2' is registered by 2 plugins; use 'good:epsilon2' or 'twin:epsilon2'\n"
    )


def test_disabled_plugins_are_listed_as_disabled_and_unknown_names_are_named(fake_distribution):
    result = run("plugins", pythonpath=fake_distribution, disable=f"{INSTALLED},twin,broken,zplug-nothing")
    assert result.stdout == (
        "good: zplug-fake 1.2\n  module: zplug_fake_good\n  rules: epsilon2\n"
        f"disabled (ZPLUG_DISABLE_PLUGINS): {', '.join(sorted([*INSTALLED.split(','), 'twin', 'broken']))}\n"
        "ZPLUG_DISABLE_PLUGINS: 'zplug-nothing' matches no installed plugin, distribution or built-in module\n"
    )
