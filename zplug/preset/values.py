"""Parameter values written in TOML, tensors included, checked without torch.

``{ tensor = [...], shape = [...], dtype = "..." }`` becomes a :class:`TensorLiteral`: the
numbers, the shape and the dtype name, checked in plain Python (numbers only, rectangular,
the shape holds as many values as given, a known dtype). It turns into a torch tensor only
when the value is used (:func:`materialize`, called when a preset is bound to a model), so
that ``zplug check`` and ``zplug presets`` never import torch.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

from zplug.errors import SpecError

TENSOR_KEYS = ("tensor", "shape", "dtype")
#: The dtype names a tensor literal may use (torch's names without ``torch.``).
DTYPES = ("float16", "bfloat16", "float32", "float64")


@attrs.frozen
class TensorLiteral:
    """A tensor written in a preset: flat values in row-major order, a shape and a dtype name.

    Attributes
    ----------
    values : tuple of float
        The numbers, flattened.
    shape : tuple of int
        The tensor's shape (``()`` for a single number).
    dtype : str
        One of :data:`DTYPES`.
    """

    values: tuple[float, ...]
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_tensor(self) -> Any:
        """Return the torch tensor (imports torch)."""
        import torch

        return torch.tensor(self.values, dtype=getattr(torch, self.dtype)).reshape(self.shape)

    def to_doc(self) -> dict[str, Any]:
        """Return the TOML data: ``{ tensor = [flat values], shape = [...], dtype = "..." }``."""
        doc: dict[str, Any] = {"tensor": list(self.values), "shape": list(self.shape)}
        if self.dtype != "float32":
            doc["dtype"] = self.dtype
        return doc

    def __repr__(self) -> str:
        return f"tensor({list(self.values)}, shape={self.shape}, dtype={self.dtype})"


def materialize(value: Any) -> Any:
    """Turn a :class:`TensorLiteral` into a torch tensor; return any other value unchanged."""
    return value.to_tensor() if isinstance(value, TensorLiteral) else value


@contextmanager
def located(*keys: str | int) -> Iterator[None]:
    """Prepend ``keys`` to the key path of a :class:`SpecError` raised inside the block."""
    try:
        yield
    except SpecError as exc:
        raise exc.at(*keys) from None


def describe(value: Any) -> str:
    """Say what a TOML value is, for 'must be ... (got ...)' messages."""
    from zplug.preset.toml import toml_value_safe

    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return f"an array {toml_value_safe(value)}" if len(value) < 6 else "an array"
    return toml_value_safe(value)


def close_match(name: str, valid: Sequence[str]) -> list[str]:
    """The nearest of ``valid`` to ``name`` (a list of at most one), for 'did you mean' hints."""
    return difflib.get_close_matches(name, list(valid), n=1)


def check_keys(table: Mapping[str, Any], valid: Sequence[str], what: str) -> None:
    """Raise :class:`SpecError` for the first key of ``table`` that is not in ``valid``."""
    for key in table:
        if key not in valid:
            close = [k for k in valid if k.lower() == str(key).lower()] or close_match(str(key), valid)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SpecError(f"unknown key '{key}' in {what} ({hint}valid keys: {', '.join(valid)})")


def string(value: Any, what: str = "a string") -> str:
    """Return ``value`` if it is a string, else raise ``must be <what>``."""
    if not isinstance(value, str):
        raise SpecError(f"must be {what} (got {describe(value)})")
    return value


def strings(value: Any, example: str) -> tuple[str, ...]:
    """Return a non-empty array of strings as a tuple."""
    if not isinstance(value, list) or not value:
        raise SpecError(f"must be a non-empty array of strings, e.g. {example} (got {describe(value)})")
    for i, item in enumerate(value):
        with located(i):
            string(item)
    return tuple(value)


def literal(value: Any) -> Any:
    """Turn a TOML value into a parameter value: ``{ tensor = ... }`` becomes a :class:`TensorLiteral`."""
    if isinstance(value, Mapping):
        if "param" in value:
            raise SpecError("a parameter reference { param = ... } can only be used in a rule or canonizer")
        return tensor_literal(value)
    return value


def tensor_literal(table: Mapping[str, Any]) -> TensorLiteral:
    """Check a ``{ tensor = ..., shape = ..., dtype = ... }`` table and return its :class:`TensorLiteral`."""
    check_keys(table, TENSOR_KEYS, "a tensor")
    if "tensor" not in table:
        raise SpecError("a tensor needs the key 'tensor' (numbers, e.g. { tensor = [0.1, 0.2], shape = [1, 2] })")
    data = table["tensor"]
    with located("tensor"):
        if not _numbers(data):
            raise SpecError(f"must be a number or a (nested) array of numbers (got {describe(data)})")
        shape = _nested_shape(data)
        if shape is None:
            raise SpecError("nested arrays must be rectangular (all rows of the same length)")
        values = tuple(_flat(data))
    dtype = "float32"
    if "dtype" in table:
        with located("dtype"):
            dtype = table["dtype"]
            if dtype not in DTYPES:
                raise SpecError(f"unknown dtype {describe(dtype)} (known: {', '.join(DTYPES)})")
    if "shape" in table:
        given = table["shape"]
        with located("shape"):
            if not isinstance(given, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in given
            ):
                raise SpecError(f"must be an array of sizes >= 0, e.g. [1, 3, 1, 1] (got {describe(given)})")
            if math.prod(given) != len(values):
                raise SpecError(f"shape {given} holds {math.prod(given)} values, the tensor has {len(values)}")
        shape = tuple(given)
    return TensorLiteral(values, shape, dtype)


def _numbers(data: Any, depth: int = 0) -> bool:
    if isinstance(data, bool):
        return False
    if isinstance(data, (int, float)):
        return True
    if isinstance(data, list) and depth < 8:
        return all(_numbers(item, depth + 1) for item in data)
    return False


def _nested_shape(data: Any) -> tuple[int, ...] | None:
    """The shape of nested lists of numbers, or ``None`` if they are not rectangular."""
    if not isinstance(data, list):
        return ()
    shapes = {_nested_shape(item) for item in data}
    if len(shapes) > 1 or None in shapes:
        return None
    return (len(data), *(shapes.pop() if shapes else ()))


def _flat(data: Any) -> Iterator[float]:
    if isinstance(data, list):
        for item in data:
            yield from _flat(item)
        return
    try:
        yield float(data)
    except OverflowError:
        raise SpecError(f"{data} is too large for a floating-point tensor") from None


__all__ = (
    "DTYPES",
    "TENSOR_KEYS",
    "TensorLiteral",
    "check_keys",
    "close_match",
    "describe",
    "literal",
    "located",
    "materialize",
    "string",
    "strings",
    "tensor_literal",
)
