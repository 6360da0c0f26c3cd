"""(preset, parameters) -> loaded preset and values: one function for zplug.explain, zplug.resolve and the CLI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import zplug
import zplug.preset.loading
from zplug.cli import main
from zplug.errors import SpecError
from zplug.preset import BoundPreset, bind_preset

_spec = importlib.util.spec_from_file_location("attr_models", Path(__file__).with_name("test_attributors_models.py"))
models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(models)


@pytest.fixture
def reads(monkeypatch):
    """The display names of the preset files read while the test runs."""
    files: list[str] = []
    real = zplug.preset.loading.read_text

    def counting(source, file):
        files.append(file)
        return real(source, file)

    monkeypatch.setattr(zplug.preset.loading, "read_text", counting)
    return files


@pytest.fixture
def child(tmp_path):
    """A preset file that extends a built-in one (two files to read)."""
    path = tmp_path / "child.toml"
    path.write_text('schema = 1\nextends = "epsilon_plus"\n[params]\nscale = 1.0\n')
    return path


def test_bind_preset_routes_by_name(registry):
    bound = bind_preset("epsilon_plus", {"n_iter": 3, "epsilon": 0.5}, attributor="smoothgrad")
    assert isinstance(bound, BoundPreset) and bound.preset.name == "epsilon_plus"
    assert bound.attributor_params == {"n_iter": 3} and bound.preset_params == {"epsilon": 0.5}
    assert bound.values() == {"epsilon": 0.5, "stabilizer": 1e-6, "zero_params": []}


def test_bind_preset_without_attributor_gives_everything_to_the_preset(registry):
    bound = bind_preset("epsilon_plus", {"n_iter": 3})
    assert bound.preset_params == {"n_iter": 3} and bound.attributor_params == {}
    with pytest.raises(SpecError) as info:
        bound.values()
    assert str(info.value) == (
        "preset 'epsilon_plus' has no parameter 'n_iter' (known: epsilon, stabilizer, zero_params)"
    )


def test_bind_preset_uses_a_loaded_preset_as_it_is(registry, reads):
    preset = zplug.load_preset("epsilon_plus")
    assert reads == ["zplug:presets/epsilon_plus.toml"]
    assert bind_preset(preset, {"epsilon": 0.1}, attributor="gradient").preset is preset
    assert reads == ["zplug:presets/epsilon_plus.toml"]


def test_explain_reads_each_preset_file_once(registry, reads, child):
    x = torch.rand(1, 3, 8, 8)
    zplug.explain(models.cnn(), x, 0, preset=child, attributor="smoothgrad", n_iter=2, epsilon=0.5, scale=2.0)
    assert reads == [str(child), "zplug:presets/epsilon_plus.toml"]


def test_resolve_reads_each_preset_file_once(registry, reads, child):
    zplug.resolve(models.cnn(), child, epsilon=0.5)
    assert reads == [str(child), "zplug:presets/epsilon_plus.toml"]


def test_cli_explain_reads_each_preset_file_once(registry, reads, child, tmp_path, capsys):
    status = main(["explain", "--demo", "--preset", str(child), "--param", "epsilon=0.5", "--param", "scale=2.0",
                   "--out", str(tmp_path / "out")])
    assert status == 0, capsys.readouterr().err
    assert reads == [str(child), "zplug:presets/epsilon_plus.toml"]
