"""The public namespace: every error class lives in zplug.errors and is exported from zplug."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import zplug
import zplug.errors


def all_modules() -> list[str]:
    names = ["zplug"]
    for info in pkgutil.walk_packages(zplug.__path__, "zplug."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def test_every_error_class_is_defined_in_zplug_errors():
    defined_elsewhere = set()
    for name in all_modules():
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, zplug.errors.ZplugError) and value.__module__ != "zplug.errors":
                defined_elsewhere.add(f"{value.__module__}.{value.__qualname__}")
    assert defined_elsewhere == set()


def test_every_error_class_is_exported_from_zplug():
    errors = {
        name for name, value in inspect.getmembers(zplug.errors, inspect.isclass)
        if issubclass(value, zplug.errors.ZplugError)
    }
    assert errors <= set(zplug.__all__)
    assert errors <= set(zplug.errors.__all__)
    for name in errors:
        assert getattr(zplug, name) is getattr(zplug.errors, name)


def test_errors_stay_importable_where_they_were():
    from zplug.canonizers import CanonizerError
    from zplug.canonizers._trace import NotTraceableError
    from zplug.cli.explain import CommandError
    from zplug.distributed import DistributedError
    from zplug.inputs import InputError

    assert (CanonizerError, NotTraceableError, CommandError, DistributedError, InputError) == (
        zplug.CanonizerError, zplug.NotTraceableError, zplug.CommandError, zplug.DistributedError, zplug.InputError
    )


def test_no_module_swaps_its_class():
    """``zplug.explain`` and ``zplug.presets`` are functions; no module pretends to be one."""
    import sys
    import types

    for name in all_modules():
        importlib.import_module(name)
        assert type(sys.modules[name]) is types.ModuleType, name
    assert inspect.isfunction(zplug.explain) and zplug.explain.__module__ == "zplug.explanation"
    assert inspect.isfunction(zplug.presets) and inspect.isfunction(zplug.load_preset)
    assert inspect.isfunction(zplug.resolve) and zplug.Preset.__module__ == "zplug.preset.records"


def test_zplug_spec_is_a_deprecated_alias_of_zplug_preset():
    import pytest

    import zplug.preset
    import zplug.spec

    for name in zplug.spec.__all__:
        vars(zplug.spec).pop(name, None)  # warn again, whatever other tests imported
        with pytest.warns(DeprecationWarning, match=f"import {name} from zplug.preset"):
            value = getattr(zplug.spec, name)
        assert value is getattr(zplug.preset, name)
