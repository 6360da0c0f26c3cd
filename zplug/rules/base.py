"""The rule base class and the declaration of rule parameters.

A rule is a frozen attrs class: its fields are its parameters, declared once with
:func:`parameter` and validated on construction, from Python and from TOML presets alike.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import torch

from zplug.errors import SpecError

if TYPE_CHECKING:
    from zplug.engine.function import LayerCall


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
            torch.equal(a.cpu(), b.cpu())
        )
    return a == b


def parameter(
    default: Any = attrs.NOTHING,
    *,
    doc: str,
    kind: str,
    check: Callable[[str, Any], None] | None = None,
    converter: Callable[[Any], Any] | None = None,
) -> Any:
    """Declare a rule parameter.

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


# -- value checks ------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)


def non_negative(name: str, value: Any) -> None:
    """Accept a real number >= 0."""
    if not _is_number(value) or value < 0:
        raise SpecError(f"parameter '{name}' must be a number >= 0 (got {value!r})")


def non_negative_or_callable(name: str, value: Any) -> None:
    """Accept a real number >= 0 or a callable ``f(z) -> stabilised z``."""
    if callable(value):
        return
    if not _is_number(value) or value < 0:
        raise SpecError(f"parameter '{name}' must be a number >= 0 or a callable f(z) (got {value!r})")


def number(name: str, value: Any) -> None:
    """Accept any real number."""
    if not _is_number(value):
        raise SpecError(f"parameter '{name}' must be a number (got {value!r})")


def number_or_tensor(name: str, value: Any) -> None:
    """Accept a real number or a floating-point tensor."""
    if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
        return
    if not _is_number(value):
        raise SpecError(f"parameter '{name}' must be a number or a tensor (got {value!r})")


def to_names(value: Any) -> Any:
    """Normalise ``zero_params``: ``None`` -> ``()``, ``"bias"`` -> ``("bias",)``, list -> tuple."""
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


@attrs.frozen(kw_only=True)
class Rule:
    """Base class of all rules.

    Subclasses set ``name`` (how presets refer to them) and ``summary`` (one line), declare
    their parameters as attrs fields with :func:`parameter`, and implement :meth:`backward`.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def backward(self, call: LayerCall, grad_outputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor | None, ...]:
        """Return the relevance of each of ``call.inputs`` given the relevance of each output.

        Parameters
        ----------
        call : LayerCall
            The module call: inputs, outputs, parameters and the layer as an operator.
        grad_outputs : tuple of torch.Tensor
            The upper-layer relevance, one tensor per output.
        """
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Return the rule's parameters by name."""
        return {f.name: getattr(self, f.name) for f in attrs.fields(type(self))}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_short(v)}" for k, v in self.params().items())
        return f"{self.name}({args})"


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= 4:
            return f"tensor({[round(v, 6) for v in value.flatten().tolist()]}, shape={tuple(value.shape)})"
        return f"tensor(shape={tuple(value.shape)}, dtype={str(value.dtype).replace('torch.', '')})"
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    return repr(value)


def parameter_info(rule_class: type[Rule]) -> dict[str, dict[str, Any]]:
    """Describe a rule class's parameters: ``{name: {"doc", "kind", "default", "required"}}``."""
    info = {}
    for field in attrs.fields(rule_class):
        required = field.default is attrs.NOTHING
        info[field.name] = {
            "doc": field.metadata.get("doc", ""),
            "kind": field.metadata.get("kind", ""),
            "required": required,
            "default": None if required else field.default,
        }
    return info


def make_part(kind: str, cls: type, params: Mapping[str, Any]) -> Any:
    """Construct a rule, canonizer or attributor class from parameters, with errors naming the parameter.

    Parameters
    ----------
    kind : str
        ``"rule"``, ``"canonizer"`` or ``"attributor"`` (for the messages).
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


def make_rule(rule_class: type[Rule], params: Mapping[str, Any]) -> Rule:
    """Construct ``rule_class`` from a parameter mapping (see :func:`make_part`)."""
    return make_part("rule", rule_class, params)


__all__ = (
    "Rule",
    "make_part",
    "make_rule",
    "names",
    "non_negative",
    "non_negative_or_callable",
    "number",
    "number_or_tensor",
    "parameter",
    "parameter_info",
    "to_names",
)
