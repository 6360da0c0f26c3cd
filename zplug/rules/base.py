"""The rule base class.

A rule is a part (:mod:`zplug.parts`): a frozen attrs class whose fields are its parameters,
declared once with :func:`~zplug.parts.parameter` and validated on construction, from Python
and from TOML presets alike. The parameter declaration and the value checks are re-exported
here, so rule authors can import everything from :mod:`zplug.rules`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from zplug.parts import (
    Part,
    make_part,
    names,
    non_negative,
    non_negative_or_callable,
    number,
    number_or_tensor,
    parameter,
    parameter_info,
    positive_int,
    to_names,
)

if TYPE_CHECKING:
    import torch

    from zplug.engine.function import LayerCall


@attrs.frozen(kw_only=True)
class Rule(Part):
    """Base class of all rules.

    Subclasses set ``name`` (how presets refer to them) and ``summary`` (one line), declare
    their parameters as attrs fields with :func:`~zplug.parts.parameter`, and implement
    :meth:`backward`.
    """

    #: True for the rules of modified-gradient methods (DeconvNet, guided backprop, ...): they change
    #: a gradient rather than propagate relevance, so in a mapping made of such rules only, the
    #: operations without a rule keep their plain gradient by design and the coverage analysis
    #: (:mod:`zplug.coverage`) checks nothing.
    gradient_method: ClassVar[bool] = False

    def needs_rectified_output(self) -> bool:
        """Whether the rule loses relevance on a layer whose output is not rectified (no ReLU after it).

        Rules that only count positive contributions (z+) drop the relevance of an output that has
        none; behind a ReLU such outputs receive no relevance. The coverage section lists the layers
        where this applies as a note. The default is False.
        """
        return False

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
    "positive_int",
    "to_names",
)
