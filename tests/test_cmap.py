"""Colour maps: the source language, parity with Zennit 0.5.1, errors, the named maps."""

from __future__ import annotations

import random

import numpy as np
import pytest

from zplug.cmap import BUILTIN_CMAPS, CMAPS, ColorMap, cmap_names, get_cmap, register_cmap
from zplug.errors import PluginConflictError, SpecError, UnknownNameError

zennit_cmap = pytest.importorskip("zennit.cmap")
LEVELS = (1.0, 0.5, 2.0, 0.0, -1.0, 1.37)

REJECTED = ["this", "fff", ",,,", "111:111:111", "fffff,fffff", "f,f", "fffffffff", "ff:", "ff:fff,00:000"]
CUSTOM = [
    "000,fff",
    "f80,00ff80",
    "000,fff,",  # a trailing comma is allowed
    " 80 : fff ,\t000 ",  # whitespace between tokens
    "40:00f,c0:f00",  # first index > 0 (copied to 0), last index < 255
    "00f,0f0,f00,ff0,0ff,f0f,fff",  # an unindexed run over the whole range
    "000,10:f00,0f0,00f,11:fff",  # truncation squeezes a run into one index
    "00:fff,000,00:f00",  # equal indices are allowed
    "fff,00:000",
    "a:123456,b:654321,fedcba",
]


def test_builtins_are_zennits_eleven():
    from zennit.image import CMAPS as ZENNIT_CMAPS

    assert sorted(BUILTIN_CMAPS) == sorted(ZENNIT_CMAPS)
    assert len(BUILTIN_CMAPS) == 11
    for name, source in BUILTIN_CMAPS.items():
        assert ZENNIT_CMAPS._sources[name] == source


@pytest.mark.parametrize("name", sorted(BUILTIN_CMAPS))
@pytest.mark.parametrize("level", LEVELS)
def test_builtin_palettes_equal_zennit(name, level):
    ours = get_cmap(name).palette(level)
    theirs = zennit_cmap.ColorMap(BUILTIN_CMAPS[name]).palette(level)
    assert ours.shape == (256, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("source", CUSTOM)
def test_custom_sources_equal_zennit(source):
    ours, theirs = ColorMap(source), zennit_cmap.ColorMap(source)
    for level in LEVELS:
        np.testing.assert_array_equal(ours.palette(level), theirs.palette(level))
    x = np.linspace(-0.2, 1.2, 1001)
    np.testing.assert_array_equal(ours(x), theirs(x))


def _random_source(rng: random.Random) -> str:
    """A well-formed source (random indices, possibly descending), mutated in one character half the time."""
    hexdigits = "0123456789abcdefABCDEF"
    nodes = []
    for _ in range(rng.randint(0, 6)):
        node = "".join(rng.choice(hexdigits) for _ in range(rng.choice([3, 6])))
        if rng.random() < 0.4:
            node = "".join(rng.choice(hexdigits) for _ in range(rng.choice([1, 2]))) + rng.choice([":", " : "]) + node
        nodes.append(node)
    source = rng.choice([",", ", ", " ,"]).join(nodes) + rng.choice(["", "", ",", " "])
    if rng.random() < 0.5:
        where = rng.randint(0, len(source))
        cut = where + rng.choice([0, 1])
        source = source[:where] + rng.choice(["", "f", "0", ":", ",", " ", "x"]) + source[cut:]
    return source


def test_random_sources_accept_reject_and_palettes_equal_zennit():
    rng = random.Random(0)
    accepted = rejected = 0
    for _ in range(2000):
        source = _random_source(rng)
        try:
            theirs = zennit_cmap.ColorMap(source)
        except RuntimeError:
            with pytest.raises(SpecError):
                ColorMap(source)
            rejected += 1
            continue
        ours = ColorMap(source)
        accepted += 1
        for level in (1.0, 0.6):
            np.testing.assert_array_equal(ours.palette(level), theirs.palette(level), err_msg=source)
    assert accepted > 200 and rejected > 200  # both branches were exercised


def test_coldnhot_node_placement():
    assert [node.index for node in get_cmap("coldnhot").nodes] == [0, 64, 128, 170, 212, 255, 256]


def test_short_colours_and_indices_are_doubled():
    cmap = ColorMap("f80,8:0a0b0c")
    assert cmap.nodes[0].color == (0xFF, 0x88, 0x00)
    assert cmap.nodes[1].index == 0x88 and cmap.nodes[1].color == (0x0A, 0x0B, 0x0C)
    # past the last index the colour is constant (sentinel at 256)
    np.testing.assert_array_equal(cmap(np.array([0.9, 1.0])), np.array([[10, 11, 12], [10, 11, 12]]) / 255)


def test_call_interpolates_and_clips():
    cmap = ColorMap("000,fff")
    out = cmap(np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]]))
    assert out.shape == (1, 5, 3)
    np.testing.assert_allclose(out[0, :, 0], [0.0, 0.0, 0.5, 1.0, 1.0])


@pytest.mark.parametrize("source", REJECTED)
def test_rejected_sources(source):
    with pytest.raises(RuntimeError):
        zennit_cmap.ColorMap(source)
    with pytest.raises(SpecError, match="colour map"):
        ColorMap(source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("this", "invalid character 't' at character 1; expected an index or a colour"),
        ("00f,8x:fff", "invalid character 'x' at character 6; expected ':' after the index"),
        (",,,", "unexpected ',' at character 1"),
        ("111:111:111", "unexpected ':' at character 4; expected ','"),
        ("fffff,fffff", "unexpected index 'ff' at character 4"),
        ("fffffffff", "unexpected colour 'fff' at character 7"),
        ("ff:", "ends after ':' at character 3; expected a colour"),
        ("fff", "needs at least 2 colours, got 1"),
        ("", "needs at least 2 colours, got 0"),
        ("ff:fff,00:000", "index 00 at character 8 is smaller than the index ff before it"),
    ],
)
def test_error_messages_name_the_character(source, message):
    with pytest.raises(SpecError) as info:
        ColorMap(source)
    assert message in str(info.value)
    assert str(info.value).startswith(f"colour map {source!r}: ")


def test_source_must_be_str():
    with pytest.raises(TypeError):
        ColorMap(None)


def test_get_cmap_accepts_instances_names_and_source():
    cmap = ColorMap("000,fff")
    assert get_cmap(cmap) is cmap
    assert get_cmap("gray") == cmap
    assert get_cmap("000, fff") == cmap  # equal by nodes, not by spelling
    assert get_cmap("bwr") is get_cmap("bwr")  # compiled once


def test_get_cmap_unknown_name_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'coldnhot'"):
        get_cmap("coldnhott")
    with pytest.raises(SpecError, match="character 5"):
        get_cmap("000,?")


def test_register_cmap(monkeypatch):
    monkeypatch.setattr("zplug.cmap.CMAPS", dict(CMAPS))
    from zplug import cmap as module

    compiled = register_cmap("mine", "0f0,f0f")
    assert "mine" in cmap_names() and module.CMAPS["mine"] == "0f0,f0f"
    assert get_cmap("mine") == compiled
    register_cmap("mine", "0f0,f0f")  # the same source again is fine
    with pytest.raises(PluginConflictError, match="already registered"):
        register_cmap("mine", "000,fff")
    assert register_cmap("mine", "000,fff", replace=True) == get_cmap("gray")
    with pytest.raises(SpecError):
        register_cmap("bad", "fff")
    assert "bad" not in module.CMAPS
    with pytest.raises(SpecError, match="invalid colour map name"):
        register_cmap("two words", "000,fff")
    assert "mine" not in BUILTIN_CMAPS


def test_colormap_is_immutable():
    cmap = get_cmap("hot")
    with pytest.raises(AttributeError):
        cmap.source = "000,fff"
    with pytest.raises(ValueError):
        cmap._colors[0, 0] = 1
