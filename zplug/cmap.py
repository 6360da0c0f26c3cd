"""Colour maps written in Zennit's colour-map source language, and the named colour maps.

The language
------------
A colour map is a comma-separated list of nodes ``[INDEX:]COLOR``, for example
``0ff,00f,80:000,f00,ff0,fff``:

* ``COLOR`` is 6 hex digits ``rrggbb`` or 3 hex digits, each doubled (``f80`` is ``ff8800``);
* ``INDEX`` is 1 or 2 hex digits (1 digit is doubled: ``8`` is ``0x88``), a position in 0..255;
* whitespace between tokens is ignored; a trailing comma is allowed.

Hex runs are split greedily: 6 digits make a long colour, else 3 a short colour, else the
1 or 2 digits are an index (so ``fffff`` is the colour ``fff`` followed by the index ``ff``).

Node placement: the first node is at 0 (if it has a larger index, it is also placed there,
so the colour is constant up to it); an unindexed last node is at 255; runs of unindexed
nodes are spaced evenly between their neighbours, positions truncated to integers; indices
must not descend; a sentinel at 256 repeats the last colour. At least 2 colours are needed.
Between nodes, colours are interpolated linearly.

The semantics and the accepted sources are Zennit's (``zennit.cmap.ColorMap``, 0.5.1), and the
palettes are identical. Deliberate differences: a bad source raises
:class:`zplug.errors.SpecError` saying what is wrong at which character (Zennit raises a bare
``RuntimeError``), and a :class:`ColorMap` is immutable (compile a new one instead of
assigning ``source``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from types import MappingProxyType
from typing import NamedTuple

from zplug._lazy import lazy_module
from zplug.errors import PluginConflictError, SpecError, UnknownNameError, unknown_name_message

np = lazy_module("numpy")  # imported when a colour map is built, not to name one

#: Zennit's eleven built-in colour maps, by name.
BUILTIN_CMAPS: MappingProxyType[str, str] = MappingProxyType(
    {
        "gray": "000,fff",
        "wred": "fff,f00",
        "wblue": "fff,00f",
        "hot": "000,f00,ff0,fff",
        "cold": "000,00f,0ff",
        "coldnhot": "0ff,00f,80:000,f00,ff0,fff",
        "bwr": "00f,80:fff,f00",
        "france": "0055a4,80:fff,ef4135",
        "seismic": "0000d0,80:d0d0d0,d00000",
        "coolio": "00d0d0,80:d0d0d0,d000d0",
        "coleus": "00d000,80:d0d0d0,d000d0",
    }
)

#: All named colour maps (name -> source): the built-ins plus those added by :func:`register_cmap`.
CMAPS: dict[str, str] = dict(BUILTIN_CMAPS)

_HEX = frozenset("0123456789abcdefABCDEF")
_NAME = re.compile(r"^[A-Za-z_][\w.\-]*$")
_SYNTAX = "syntax: comma-separated [INDEX:]COLOR nodes, COLOR = 3 or 6 hex digits, INDEX = 1 or 2 hex digits"


class Token(NamedTuple):
    """One lexical token: ``kind`` is ``color``, ``index``, ``colon``, ``comma`` or ``invalid``."""

    kind: str
    text: str
    pos: int


class Node(NamedTuple):
    """A colour at a position in 0..256 (RGB in 0..255)."""

    index: int
    color: tuple[int, int, int]


def tokenize(source: str) -> Iterator[Token]:
    """Split ``source`` into tokens, skipping whitespace (invalid characters become ``invalid`` tokens)."""
    pos = 0
    while pos < len(source):
        char = source[pos]
        if char.isspace():
            pos += 1
        elif char in _HEX:
            end = pos
            while end < len(source) and source[end] in _HEX:
                end += 1
            run = end - pos
            length = 6 if run >= 6 else 3 if run >= 3 else run
            yield Token("color" if length >= 3 else "index", source[pos : pos + length], pos)
            pos += length
        elif char in ":,":
            yield Token("colon" if char == ":" else "comma", char, pos)
            pos += 1
        else:
            yield Token("invalid", char, pos)
            pos += 1


def _color(text: str) -> tuple[int, int, int]:
    if len(text) == 3:
        text = "".join(c + c for c in text)
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def _describe(token: Token) -> str:
    names = {"color": "colour", "index": "index", "colon": "':'", "comma": "','", "invalid": "character"}
    what = names[token.kind]
    shown = f" '{token.text}'" if token.kind in ("color", "index", "invalid") else ""
    return f"{what}{shown} at character {token.pos + 1}"


def parse(source: str) -> list[tuple[int | None, tuple[int, int, int], int]]:
    """Parse ``source`` into ``(index or None, rgb, position of the node's first token)`` per node.

    Raises
    ------
    SpecError
        At the first token that does not fit the grammar.
    """
    nodes: list[tuple[int | None, tuple[int, int, int], int]] = []
    state = "start"  # start -> (index -> colon ->) color -> comma -> start
    index: int | None = None
    index_pos = 0
    last: Token | None = None
    expected = {
        "start": "an index or a colour",
        "index": "':' after the index",
        "colon": "a colour after ':'",
        "color": "',' before the next node",
    }
    for token in tokenize(source):
        if token.kind == "index" and state == "start":
            index = int(token.text * 2 if len(token.text) == 1 else token.text, 16)
            index_pos, state = token.pos, "index"
        elif token.kind == "colon" and state == "index":
            state = "colon"
        elif token.kind == "color" and state in ("start", "colon"):
            if state == "colon":
                nodes.append((index, _color(token.text), index_pos))
            else:
                nodes.append((None, _color(token.text), token.pos))
            index, state = None, "color"
        elif token.kind == "comma" and state == "color":
            state = "start"
        else:
            problem = "invalid" if token.kind == "invalid" else "unexpected"
            raise _error(source, f"{problem} {_describe(token)}; expected {expected[state]} ({_SYNTAX})")
        last = token
    if state in ("index", "colon"):
        raise _error(source, f"the source ends after {_describe(last)}; expected {expected[state]}")
    return nodes


def place(nodes: list[tuple[int | None, tuple[int, int, int], int]], source: str = "") -> list[Node]:
    """Place parsed nodes at their positions, add the sentinel at 256, and check the order.

    Raises
    ------
    SpecError
        If there are fewer than 2 colours or an index is smaller than the one before it.
    """
    if len(nodes) < 2:
        raise _error(source, f"a colour map needs at least 2 colours, got {len(nodes)} (e.g. '000,fff')")
    first_index, first_color, _ = nodes[0]
    placed = [Node(0, first_color)]
    if first_index:
        placed.append(Node(first_index, first_color))
    pending: list[tuple[int, int, int]] = []
    rest = nodes[1:]
    for number, (index, color, pos) in enumerate(rest):
        if index is None:
            if number < len(rest) - 1:
                pending.append(color)
                continue
            index = 255
        elif index < placed[-1].index:
            raise _error(
                source,
                f"index {index:02x} at character {pos + 1} is smaller than the index "
                f"{placed[-1].index:02x} before it; indices must ascend from left to right",
            )
        if pending:
            left = placed[-1].index
            fractions = np.linspace(0.0, 1.0, len(pending) + 2)[1:-1]
            placed.extend(
                Node(int(left * (1.0 - fraction) + index * fraction), between)
                for fraction, between in zip(fractions, pending)
            )
            pending = []
        placed.append(Node(index, color))
    placed.append(Node(256, placed[-1].color))
    return placed


def _error(source: str, message: str) -> SpecError:
    return SpecError(f"colour map {source!r}: {message}")


class ColorMap:
    """A colour map compiled from colour-map source (see the module docstring for the language).

    Parameters
    ----------
    source : str
        The source, e.g. ``"00f,80:fff,f00"``.

    Raises
    ------
    SpecError
        If ``source`` is not valid; the message says at which character (1-based) it fails.
    """

    def __init__(self, source: str) -> None:
        if not isinstance(source, str):
            raise TypeError(f"colour map source must be a str, not {type(source).__name__}")
        nodes = place(parse(source), source)
        self._source = source
        self._nodes = tuple(nodes)
        self._indices = np.array([node.index for node in nodes], dtype=np.int64)
        self._colors = np.array([node.color for node in nodes], dtype=np.int64)
        self._indices.flags.writeable = False
        self._colors.flags.writeable = False

    @property
    def source(self) -> str:
        """The source this colour map was compiled from."""
        return self._source

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The placed nodes, including the first one at 0 and the sentinel at 256."""
        return self._nodes

    def __call__(self, x) -> np.ndarray:
        """Map values in [0, 1] (clipped) to RGB in [0, 1]; the result has a new last axis of size 3.

        Parameters
        ----------
        x : array_like
            Values of any shape; computed in float64.
        """
        scaled = np.clip(np.asarray(x, dtype=np.float64) * 255, 0, 255)
        upper = np.searchsorted(self._indices[:-1], scaled, side="right")
        lower = upper - 1
        alpha = ((scaled - self._indices[lower]) / (self._indices[upper] - self._indices[lower]))[..., None]
        return (self._colors[lower] * (1 - alpha) + self._colors[upper] * alpha) / 255.0

    def palette(self, level: float = 1.0) -> np.ndarray:
        """Return the 8-bit palette: a (256, 3) uint8 array.

        Entry ``i`` is the colour at ``(1 + level * (2 i / 255 - 1)) / 2``, clipped to [0, 1]:
        ``level > 1`` saturates earlier, ``level < 1`` uses a narrower range around the centre.
        """
        values = np.clip((np.linspace(-1.0, 1.0, 256, dtype=np.float64) * level + 1.0) / 2.0, 0.0, 1.0)
        return np.clip(np.round(self(values) * 255.0, 12), 0.0, 255.0).astype(np.uint8)

    def flat_palette(self, level: float = 1.0) -> list[int]:
        """Return :meth:`palette` as a flat list of 768 ints, the form ``PIL.Image.putpalette`` takes."""
        return self.palette(level).reshape(-1).tolist()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ColorMap):
            return NotImplemented
        return self._nodes == other._nodes

    def __hash__(self) -> int:
        return hash(self._nodes)

    def __repr__(self) -> str:
        return f"ColorMap({self._source!r})"


@functools.lru_cache(maxsize=128)
def _compiled(source: str) -> ColorMap:
    return ColorMap(source)


def register_cmap(name: str, source: str, *, replace: bool = False) -> ColorMap:
    """Add a named colour map (what a plugin's colour maps go through).

    Parameters
    ----------
    name : str
        The name (letters, digits, ``_``, ``-``, ``.``; starting with a letter or ``_``).
    source : str
        Its colour-map source; compiled now, so a bad source fails here.
    replace : bool
        Allow replacing an existing name that has a different source.

    Returns
    -------
    ColorMap
        The compiled colour map.

    Raises
    ------
    SpecError
        If the name or the source is invalid.
    PluginConflictError
        If ``name`` is taken by a different source and ``replace`` is false.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecError(f"invalid colour map name {name!r}: use letters, digits, '_', '-' or '.'")
    compiled = _compiled(source)
    if CMAPS.get(name, source) != source and not replace:
        raise PluginConflictError(
            f"colour map '{name}' is already registered as {CMAPS[name]!r}; pass replace=True to replace it"
        )
    CMAPS[name] = source
    return compiled


def cmap_names() -> list[str]:
    """Return the names of all registered colour maps, sorted."""
    return sorted(CMAPS)


def get_cmap(cmap: ColorMap | str) -> ColorMap:
    """Return a :class:`ColorMap` for a colour map, a registered name or colour-map source.

    Raises
    ------
    UnknownNameError
        If ``cmap`` looks like a name (no ``,`` or ``:``) but is neither registered nor valid source.
    SpecError
        If ``cmap`` is invalid colour-map source.
    """
    if isinstance(cmap, ColorMap):
        return cmap
    if not isinstance(cmap, str):
        raise TypeError(f"a colour map must be a ColorMap, a name or source, not {type(cmap).__name__}")
    if cmap in CMAPS:
        return _compiled(CMAPS[cmap])
    try:
        return _compiled(cmap)
    except SpecError:
        if _NAME.match(cmap):
            raise UnknownNameError(unknown_name_message("colour map", cmap, CMAPS)) from None
        raise


__all__ = (
    "BUILTIN_CMAPS",
    "CMAPS",
    "ColorMap",
    "Node",
    "Token",
    "cmap_names",
    "get_cmap",
    "parse",
    "place",
    "register_cmap",
    "tokenize",
)
