"""The part model shared by rules, canonizers, attributors and every other registered part.

A part is a frozen, keyword-only attrs class with two class attributes, ``name`` (how presets,
the CLI and the registry refer to it) and ``summary`` (one line for listings). Its fields are its
parameters, each declared once with :func:`parameter` (a one-line ``doc``, the accepted ``kind``
in words and an optional ``check``). The same declaration serves Python calls, TOML presets and
the CLI:

* :func:`make_part` builds a part from a parameter mapping and turns every mistake into a
  :class:`~zplug.errors.SpecError` that names the parameter and the fix;
* :func:`parameter_info` describes the parameters for listings;
* every part prints as ``name(param=value, ...)``.

This module imports neither torch nor anything else heavy: the registry can describe parts
without loading torch, and a tensor check only looks for tensors once torch is loaded.

Examples
--------
>>> import attrs
>>> from zplug.parts import Part, non_negative, parameter
>>> @attrs.frozen(kw_only=True)
... class Scale(Part):
...     name = "scale"
...     summary = "multiply by a factor"
...     factor: float = parameter(1.0, doc="the factor", kind="number >= 0", check=non_negative)
>>> Scale(factor=2.0)
scale(factor=2.0)
"""

from __future__ import annotations

import difflib
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any, ClassVar

import attrs

from zplug.errors import SpecError

#: ``check(name, value)``: raises :class:`SpecError` for an invalid value of parameter ``name``.
Check = Callable[[str, Any], None]


def _torch_tensor_type() -> type | None:
    """``torch.Tensor`` if torch is loaded, else ``None`` (no value can be a tensor then)."""
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None)


def is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor, without importing torch."""
    tensor = _torch_tensor_type()
    return tensor is not None and isinstance(value, tensor)


def _same(a: Any, b: Any) -> bool:
    if is_tensor(a) or is_tensor(b):
        if not (is_tensor(a) and is_tensor(b)) or a.shape != b.shape:
            return False
        import torch

        return bool(torch.equal(a.cpu(), b.cpu()))
    return a == b


def parameter(
    default: Any = attrs.NOTHING,
    *,
    doc: str,
    kind: str,
    check: Check | None = None,
    converter: Callable[[Any], Any] | None = None,
) -> Any:
    """Declare a parameter of a part.

    Parameters
    ----------
    default : Any
        The default; omit it for a required parameter.
    doc : str
        One line for listings and error messages.
    kind : str
        What values are accepted, in words (``"number >= 0"``, ``"number or tensor"``).
    check : Callable or None
        ``check(name, value)`` raises :class:`SpecError` for an invalid value.
    converter : Callable or None
        Normalises the value before it is checked (e.g. a string to a tuple).
    """

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if check is not None:
            check(attribute.name, value)

    return attrs.field(
        default=default,
        validator=validate,
        converter=converter,
        eq=attrs.cmp_using(eq=_same),
        metadata={"doc": doc, "kind": kind},
    )


# -- value checks --------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)


def _require_finite(name: str, value: Any) -> None:
    # inf passes the type checks but turns every heatmap into NaN or grey: refuse it by name.
    if isinstance(value, Real) and not isinstance(value, bool) and math.isinf(value):
        raise SpecError(f"parameter '{name}' must be finite (got {value!r})")
    if is_tensor(value) and value.is_floating_point():
        import torch

        if not bool(torch.isfinite(value).all()):
            raise SpecError(f"parameter '{name}' must be finite (got a tensor with NaN or infinite entries)")


def non_negative(name: str, value: Any) -> None:
    """Accept a finite real number >= 0."""
    _require_finite(name, value)
    if not _is_number(value) or value < 0:
        raise SpecError(f"parameter '{name}' must be a number >= 0 (got {value!r})")


def non_negative_or_callable(name: str, value: Any) -> None:
    """Accept a finite real number >= 0 or a callable ``f(z) -> stabilised z``."""
    if callable(value):
        return
    _require_finite(name, value)
    if not _is_number(value) or value < 0:
        raise SpecError(f"parameter '{name}' must be a number >= 0 or a callable f(z) (got {value!r})")


def number(name: str, value: Any) -> None:
    """Accept any finite real number."""
    _require_finite(name, value)
    if not _is_number(value):
        raise SpecError(f"parameter '{name}' must be a number (got {value!r})")


def number_or_tensor(name: str, value: Any) -> None:
    """Accept a finite real number or a finite floating-point (or integer) tensor."""
    _require_finite(name, value)
    if is_tensor(value):
        import torch

        if value.is_floating_point() or value.dtype in (torch.int32, torch.int64):
            return
    if not _is_number(value):
        raise SpecError(f"parameter '{name}' must be a number or a tensor (got {value!r})")


def positive_int(name: str, value: Any) -> None:
    """Accept an integer >= 1."""
    if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
        raise SpecError(f"parameter '{name}' must be an integer >= 1 (got {value!r})")


def non_negative_int(name: str, value: Any) -> None:
    """Accept an integer >= 0."""
    if not isinstance(value, Integral) or isinstance(value, bool) or value < 0:
        raise SpecError(f"parameter '{name}' must be an integer >= 0 (got {value!r})")


def to_names(value: Any) -> Any:
    """Normalise a list of names: ``None`` -> ``()``, ``"bias"`` -> ``("bias",)``, list -> tuple."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence):
        return tuple(value)
    return value


def names(name: str, value: Any) -> None:
    """Accept a tuple of parameter names."""
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise SpecError(
            f"parameter '{name}' must be a parameter name or a list of names, e.g. [\"bias\"] (got {value!r})"
        )


# -- the base class ------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class Part:
    """Base class of every registered part (rules, canonizers, attributors, ...).

    Subclasses are ``@attrs.frozen(kw_only=True)`` classes that set ``name`` and ``summary`` and
    declare their parameters with :func:`parameter`. They print as ``name(param=value, ...)``
    whether or not attrs generated a ``__repr__`` for them.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def params(self) -> dict[str, Any]:
        """Return the part's parameters by name."""
        return {f.name: getattr(self, f.name) for f in attrs.fields(type(self))}

    def __repr__(self) -> str:
        return format_part(self)

    @classmethod
    def __attrs_init_subclass__(cls) -> None:
        # attrs gives every decorated subclass its own ``Cls(a=1)`` repr; parts print by name.
        if cls.__dict__.get("__repr__") is not Part.__repr__:
            cls.__repr__ = Part.__repr__


def short_value(value: Any) -> str:
    """A short, readable form of a parameter value (tensors by shape, callables by name)."""
    if is_tensor(value):
        if value.numel() <= 4:
            return f"tensor({[round(v, 6) for v in value.flatten().tolist()]}, shape={tuple(value.shape)})"
        return f"tensor(shape={tuple(value.shape)}, dtype={str(value.dtype).replace('torch.', '')})"
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    return repr(value)


def format_part(part: Any) -> str:
    """``name(param=value, ...)`` for any attrs part."""
    args = ", ".join(f"{f.name}={short_value(getattr(part, f.name))}" for f in attrs.fields(type(part)))
    return f"{type(part).name}({args})"


def parameter_info(cls: type) -> dict[str, dict[str, Any]]:
    """Describe a part class's parameters: ``{name: {"doc", "kind", "default", "required"}}``."""
    info = {}
    for field in attrs.fields(cls):
        required = field.default is attrs.NOTHING
        info[field.name] = {
            "doc": field.metadata.get("doc", ""),
            "kind": field.metadata.get("kind", ""),
            "required": required,
            "default": None if required else field.default,
        }
    return info


def make_part(kind: str, cls: type, params: Mapping[str, Any]) -> Any:
    """Construct a part class from parameters, with errors naming the parameter.

    Parameters
    ----------
    kind : str
        ``"rule"``, ``"canonizer"``, ``"attributor"``, ... (for the messages).
    cls : type
        An attrs class with a ``name`` class attribute; its fields are the parameters.
    params : Mapping[str, Any]
        The parameter values.

    Raises
    ------
    SpecError
        For unknown or missing parameters and invalid values.
    """
    fields = {f.name: f for f in attrs.fields(cls)}
    valid = ", ".join(fields) or "none"
    for key in params:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SpecError(f"{kind} '{cls.name}' has no parameter '{key}' ({hint}valid: {valid})")
    missing = [n for n, f in fields.items() if f.default is attrs.NOTHING and n not in params]
    if missing:
        doc = fields[missing[0]].metadata.get("doc")
        raise SpecError(f"{kind} '{cls.name}' needs parameter '{missing[0]}'" + (f" ({doc})" if doc else ""))
    try:
        return cls(**params)
    except SpecError as exc:
        raise SpecError(f"{kind} '{cls.name}': {exc.message}") from None
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{kind} '{cls.name}': {exc}") from None


__all__ = (
    "Check",
    "Part",
    "format_part",
    "is_tensor",
    "make_part",
    "names",
    "non_negative",
    "non_negative_or_callable",
    "number",
    "number_or_tensor",
    "parameter",
    "parameter_info",
    "non_negative_int",
    "positive_int",
    "short_value",
    "to_names",
)
