"""Search spaces: the preset parameters ``zplug tune`` varies, and the values each may take.

A dimension is written ``KEY=SPEC`` on the command line:

``gamma=[0.0, 0.1, 0.25, 1.0]``
    a list of choices (TOML values);
``gamma=0.01..10``
    every number between two bounds, uniformly;
``gamma=0.01..10:log``
    every number between two positive bounds, uniformly in the logarithm.

Grid search takes each list as it is and ``grid_points`` evenly spaced values of each range (in the
logarithm for ``:log``); random search and TPE draw from the ranges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from zplug.errors import SpecError


@attrs.frozen(kw_only=True)
class Choice:
    """A parameter that takes one of ``values``."""

    values: tuple[Any, ...]

    def grid(self, points: int) -> list[Any]:
        """Every value."""
        return list(self.values)

    def draw(self, rng: np.random.Generator) -> Any:
        """One value, uniformly."""
        return self.values[int(rng.integers(len(self.values)))]

    def spec(self) -> str:
        """The dimension as written on the command line."""
        return "[" + ", ".join(_toml_value(v) for v in self.values) + "]"


@attrs.frozen(kw_only=True)
class Range:
    """A number between ``low`` and ``high`` (uniform, or uniform in the logarithm when ``log``)."""

    low: float
    high: float
    log: bool = False

    def grid(self, points: int) -> list[float]:
        """``points`` evenly spaced values from ``low`` to ``high`` (geometrically when ``log``)."""
        if points == 1:
            return [float(math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2)]
        values = np.geomspace(self.low, self.high, points) if self.log else np.linspace(self.low, self.high, points)
        return [float(v) for v in values]

    def draw(self, rng: np.random.Generator) -> float:
        """One value."""
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def spec(self) -> str:
        """The dimension as written on the command line."""
        return f"{_toml_value(self.low)}..{_toml_value(self.high)}" + (":log" if self.log else "")


Dimension = Choice | Range


def _toml_value(value: Any) -> str:
    from zplug.tune.writer import toml_value

    return toml_value(value)


def parse_dimension(key: str, text: str) -> Dimension:
    """Parse the ``SPEC`` of ``KEY=SPEC`` (see the module docstring).

    Raises
    ------
    SpecError
        For malformed text, an empty list, bounds in the wrong order, or a logarithmic range
        that does not stay positive.
    """
    text = text.strip()
    where = f"--space {key}={text}"
    if text.startswith("["):
        from zplug.preset import parse_toml

        try:
            values = parse_toml(f"value = {text}")["value"]
        except SpecError as exc:
            raise SpecError(f"{where}: not a TOML list ({exc.message})") from None
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: give at least one value, e.g. [0.1, 0.25, 1.0]")
        return Choice(values=tuple(values))
    body, log = (text[:-4], True) if text.endswith(":log") else (text, False)
    low_text, sep, high_text = body.partition("..")
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        low = high = math.nan
    if not sep or not (math.isfinite(low) and math.isfinite(high)):
        raise SpecError(f"{where}: expected a list [a, b, c], a range LOW..HIGH, or LOW..HIGH:log")
    if low >= high:
        raise SpecError(f"{where}: the lower bound must be below the upper bound")
    if log and low <= 0:
        raise SpecError(f"{where}: a logarithmic range needs positive bounds (got {low_text})")
    return Range(low=low, high=high, log=log)


def parse_space(items: Sequence[str]) -> dict[str, Dimension]:
    """Parse ``KEY=SPEC`` strings into ``{key: dimension}``, in order."""
    space: dict[str, Dimension] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise SpecError(f"--space {item!r}: expected KEY=SPEC, e.g. --space gamma=0.01..10:log")
        if key in space:
            raise SpecError(f"--space {key}: given twice")
        space[key] = parse_dimension(key, text)
    return space


def describe_space(space: Mapping[str, Dimension]) -> dict[str, str]:
    """``{key: spec}``: the space as written on the command line (for logs and records)."""
    return {key: dim.spec() for key, dim in space.items()}


__all__ = ("Choice", "Dimension", "Range", "describe_space", "parse_dimension", "parse_space")
