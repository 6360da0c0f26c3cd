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
    assert str(info.value) == "cannot import 'zplug_no_such_package.Gate' (no module 'zplug_no_such_package')"
    assert layer_classes(f"{package}.layers.Gate", registry)[0].__name__ == "Gate"  # the resolver imports it


def test_a_plugin_declaring_something_else_than_a_class_or_path_is_broken(registry):
    class Plugin:
        @staticmethod
        @zplug.hookimpl
        def zplug_register_layer_types():
            return {"lazy_gate": ["Gate"]}

    registry.register(Plugin, "bad")
    with pytest.warns(RuntimeWarning, match="'Gate' is neither a class nor a dotted class path"):
        assert "lazy_gate" not in registry.layer_types
