"""Layer types declared by class paths: resolved against imported modules only, checked without imports."""

from __future__ import annotations

import sys

import pytest
import torch

import zplug
from zplug.errors import SpecError
from zplug.preset.classes import check_layer_type, imported_class, layer_classes


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package ``zplug_lazy_pkg`` on the path, not imported yet, with a module class ``layers.Gate``."""
    root = tmp_path / "zplug_lazy_pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "layers.py").write_text("import torch\n\n\nclass Gate(torch.nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "zplug_lazy_pkg"
    for name in [m for m in sys.modules if m.startswith("zplug_lazy_pkg")]:
        del sys.modules[name]


def test_a_declared_path_resolves_only_once_its_module_is_imported(registry, package):
    class Plugin:
        @staticmethod
        @zplug.hookimpl
        def zplug_register_layer_types():
            return {"lazy_gate": [f"{package}.layers.Gate"], "activation": [f"{package}.layers.Gate"]}

    registry.register(Plugin, "lazy")
    assert "lazy_gate" in registry.layer_types
    assert registry.layer_types.declared("lazy_gate") == (f"{package}.layers.Gate",)
    assert registry.layer_types["lazy_gate"] == () and package not in sys.modules  # nothing imported to answer
    assert torch.nn.ReLU in registry.layer_types["activation"]
    from zplug_lazy_pkg.layers import Gate

    assert registry.layer_types["lazy_gate"] == (Gate,) and Gate in registry.layer_types["activation"]
    assert imported_class(f"{package}.layers.Gate") is Gate


def test_a_declared_path_to_a_missing_class_is_an_error_once_its_module_is_imported(package):
    assert imported_class(f"{package}.layers.Gat") is None
    __import__(f"{package}.layers")
    with pytest.raises(SpecError, match=r"^cannot find class 'zplug_lazy_pkg.layers.Gat' \(module "):
        imported_class(f"{package}.layers.Gat")


def test_a_class_path_in_a_preset_is_checked_without_importing_its_package(registry, package):
    check_layer_type(f"{package}.layers.Gate", registry)
    assert package not in sys.modules
    with pytest.raises(SpecError) as info:
        check_layer_type("zplug_no_such_package.Gate", registry)
    assert str(info.value) == "cannot find 'zplug_no_such_package.Gate' (no module 'zplug_no_such_package')"
    assert layer_classes(f"{package}.layers.Gate", registry) == ()  # not imported: no model can hold a Gate
    assert package not in sys.modules
    __import__(f"{package}.layers")
    assert layer_classes(f"{package}.layers.Gate", registry)[0].__name__ == "Gate"


def test_a_plugin_declaring_something_else_than_a_class_or_path_is_broken(registry):
    class Plugin:
        @staticmethod
        @zplug.hookimpl
        def zplug_register_layer_types():
            return {"lazy_gate": ["Gate"]}

    registry.register(Plugin, "bad")
    with pytest.warns(RuntimeWarning, match="'Gate' is neither a class nor a dotted class path"):
        assert "lazy_gate" not in registry.layer_types


def test_checking_or_resolving_a_preset_never_runs_the_code_its_class_paths_name(tmp_path, monkeypatch):
    """A preset is data: ``types = ["evil.Foo"]`` must not import ``evil`` (whose top level could do anything)."""
    import subprocess

    marker = tmp_path / "ran"
    package = tmp_path / "zplug_evil_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    preset = tmp_path / "evil.toml"
    preset.write_text(
        'schema = 1\n[[layer_map]]\ntypes = ["zplug_evil_pkg.Foo", "zplug_evil_pkg.sub.Bar"]\nrule = "epsilon"\n'
    )
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{__import__('os').environ.get('PYTHONPATH', '')}"}
    check = subprocess.run([sys.executable, "-m", "zplug", "check", str(preset)], env=env, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr
    code = (
        "import torch, zplug\n"
        f"m = zplug.resolve(torch.nn.Sequential(torch.nn.Linear(2, 2)), {str(preset)!r}, canonizers=[])\n"
        "print(m['0'].rule)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "None"  # the class cannot be in the model: nothing matched
    assert not marker.exists()
