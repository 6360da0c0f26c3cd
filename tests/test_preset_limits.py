"""Presets that are too deep, too large or cyclic get one-line errors, never a RecursionError or a memory blow-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import zplug
from zplug.errors import SpecError
from zplug.preset.toml import MAX_NESTING, MAX_PRESET_BYTES

BODY = '[[layer_map]]\ntypes = ["linear"]\nrule = "epsilon"\n'


def _chain(folder: Path, length: int) -> Path:
    """p0.toml extends p1.toml extends ... p{length-1}.toml (which extends nothing)."""
    for i in range(length):
        extends = f'extends = "p{i + 1}.toml"\n' if i < length - 1 else ""
        (folder / f"p{i}.toml").write_text(f"schema = 1\n{extends}{BODY}")
    return folder / "p0.toml"


def test_a_long_chain_that_is_not_a_cycle_loads(tmp_path):
    assert zplug.load_preset(_chain(tmp_path, 20)).name == "p0"


def test_a_chain_beyond_the_limit_is_called_too_deep_not_a_cycle(tmp_path):
    with pytest.raises(SpecError) as info:
        zplug.load_preset(_chain(tmp_path, 40))
    assert str(info.value) == (
        f"{tmp_path}/p32.toml: extends: the extends chain is more than 32 presets deep; merge some of them"
    )


def test_a_cycle_through_a_symbolic_link_is_found_by_the_real_path(tmp_path):
    (tmp_path / "a.toml").write_text(f'schema = 1\nextends = "b.toml"\n{BODY}')
    os.symlink(tmp_path / "a.toml", tmp_path / "b.toml")
    with pytest.raises(SpecError) as info:
        zplug.load_preset(tmp_path / "a.toml")
    assert str(info.value) == (
        f"{tmp_path}/b.toml: extends: presets extend each other in a cycle ({tmp_path}/a.toml -> {tmp_path}/b.toml)"
    )


def test_deep_nesting_is_refused_without_recursion_error(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("schema = 1\nx = " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(SpecError) as info:
        zplug.load_preset(path)
    assert str(info.value) == (
        f"{path}: arrays or tables nested more than {MAX_NESTING} levels deep; a preset needs a few"
    )


def test_nesting_just_past_the_limit_is_refused_and_at_the_limit_is_parsed(tmp_path):
    from zplug.preset.toml import parse_toml

    assert parse_toml("x = " + "[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1))["x"]
    with pytest.raises(SpecError, match="nested more than 64 levels deep"):
        parse_toml("x = " + "[" * MAX_NESTING + "]" * MAX_NESTING)


def test_a_huge_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "huge.toml"
    path.write_text("schema = 1\n" + "# padding\n" * (MAX_PRESET_BYTES // 10 + 1))
    with pytest.raises(SpecError) as info:
        zplug.load_preset(path)
    assert str(info.value) == f"{path}: larger than 4 MiB; a preset is a few kilobytes"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_device_is_read_only_up_to_the_limit():
    from zplug.preset.toml import read_text

    with pytest.raises(SpecError, match=r"^/dev/zero: larger than 4 MiB"):
        read_text(Path("/dev/zero"), "/dev/zero")
