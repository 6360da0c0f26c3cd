"""The rule base class.

A rule is a part (:mod:`zplug.parts`): a frozen attrs class whose fields are its parameters,
declared once with :func:`~zplug.parts.parameter` and validated on construction, from Python
and from TOML presets alike. The parameter declaration and the value checks are re-exported
here, so rule authors can import everything from :mod:`zplug.rules`.

Besides :meth:`Rule.backward`, a rule may declare two things the engine and the conservation
ledger use: :attr:`Rule.passes_relevance` (its backward hands the relevance through unchanged) and
:meth:`Rule.absorption` (how much relevance its stabiliser and the layer's bias absorbed).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
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


def relevance_total(relevance: torch.Tensor | None) -> float:
    """The sum of ``relevance`` over all entries (the batch included), in float64; 0 for None."""
    return 0.0 if relevance is None else float(relevance.detach().double().sum())


@attrs.frozen(kw_only=True)
class Absorption:
    """The relevance one rule computation absorbed, by cause (sums over the batch, see :meth:`Rule.absorption`).

    Attributes
    ----------
    stabilizer : float
        Absorbed by the stabiliser of the denominator (epsilon).
    bias : float
        Absorbed by the layer's bias (its share of the output that no input contributed).
    """

    stabilizer: float
    bias: float


@attrs.frozen(kw_only=True)
class Rule(Part):
    """Base class of all rules.

    Subclasses set ``name`` (how presets refer to them) and ``summary`` (one line), declare
    their parameters as attrs fields with :func:`~zplug.parts.parameter`, and implement
    :meth:`backward`. They may also set :attr:`passes_relevance` and implement :meth:`absorption`.
    """

    #: True declares that :meth:`backward` returns the output's relevance unchanged on a call with
    #: one tensor input and one output of the same shape. The engine then skips the rule there
    #: (no :class:`~zplug.engine.LayerCall`, no call), and on a forward that a canonizer marked as
    #: the identity (:func:`zplug.engine.mark_identity`) it makes no autograd node at all. A subclass
    #: that defines its own ``backward`` does not inherit the declaration (it is reset to False
    #: unless the subclass sets it again), so an override is never skipped by mistake.
    passes_relevance: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "backward" in cls.__dict__ and "passes_relevance" not in cls.__dict__:
            cls.passes_relevance = False
        if "compute_forward" in cls.__dict__:
            cls.computes_forward = True

    #: True for the rules of modified-gradient methods (DeconvNet, guided backprop, ...): they change
    #: a gradient rather than propagate relevance, so in a mapping made of such rules only, the
    #: operations without a rule keep their plain gradient by design and the coverage analysis
    #: (:mod:`zplug.coverage`) checks nothing.
    gradient_method: ClassVar[bool] = False

    #: True for rules whose relevance is that of the rules inside the module, computed again in the
    #: backward pass (``recompute``): the module's forward then keeps nothing for the backward pass but
    #: its inputs. While observers (the ledger) watch, the engine runs the module's forward as it is,
    #: so that they see the modules inside one by one; the coverage analysis looks inside it too.
    recomputes: ClassVar[bool] = False

    #: True where the class (or a base) overrides :meth:`compute_forward` (set automatically): the engine
    #: then lets the rule compute the module's output in the forward pass.
    computes_forward: ClassVar[bool] = False

    def compute_forward(self, module: torch.nn.Module, forward, args: tuple, kwargs: dict, state: dict):
        """Compute the module's output in the forward pass (no autograd recording); the default runs ``forward``.

        A rule whose :meth:`backward` does not depend on how the output was computed may compute the
        same output another way, e.g. with a fused kernel (``fused_attention``). The output is what
        the layers above receive, and what :attr:`LayerCall.outputs` holds in the backward pass.

        Parameters
        ----------
        module : torch.nn.Module
            The module.
        forward : Callable
            Its forward (the class's, or one a canonizer installed).
        args, kwargs
            The call's arguments.
        state : dict
            Empty; what the rule puts there, the backward pass finds in :attr:`LayerCall.state` (and it
            is kept until then: keep only what the backward pass needs).
        """
        return forward(*args, **kwargs)

    def gradient_form(self, module: torch.nn.Module) -> str | None:
        """How the rule computes in gradient form (``form="gradient"``, see :mod:`zplug.engine.gradient_form`).

        ``"plain"``: on ``module`` the rule's gradient form is the module's own gradient, so no
        autograd node is made for it; ``"rule"``: :meth:`gradient` computes it; None (the default):
        the rule has no gradient form, and a mapping with it cannot be applied in gradient form.
        """
        return None

    def gradient(self, call: LayerCall, grad_outputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor | None, ...]:
        """The rule in gradient form: the relevance of each input divided by the input.

        ``grad_outputs[k]`` is ``G_k`` with output ``k``'s relevance ``R_k = out_k * G_k``; return ``G_i``
        such that ``x_i * G_i`` is what :meth:`backward` returns for those ``R_k``. Called in gradient form
        for rules whose :meth:`gradient_form` is ``"rule"``.
        """
        raise NotImplementedError

    def needs_rectified_output(self) -> bool:
        """Whether the rule loses relevance on a layer whose output is not rectified (no ReLU after it).

        Rules that only count positive contributions (z+) drop the relevance of an output that has
        none; behind a ReLU such outputs receive no relevance. The coverage section lists the layers
        where this applies as a note. The default is False.
        """
        return False

    def receivers(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Collection[int] | None:
        """The positions of ``inputs`` (a call with tensor arguments only) that can receive relevance.

        ``None`` (the default): any of them. The engine detaches the others before the module runs, so
        the graph behind them, and whatever it keeps for its backward pass, is freed once the forward
        pass no longer needs it (CP-LRP's query/key path keeps no attention scores). Only declare what
        :meth:`backward` would return ``None`` (or zeros) for anyway: the relevance must not change.
        Not used while observers (the ledger) watch the layer, so they still see every operation.
        """
        return None

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

    def absorption(
        self,
        call: LayerCall,
        grad_outputs: tuple[torch.Tensor, ...],
        relevance: Sequence[torch.Tensor | None],
    ) -> Absorption | None:
        """Say how much of the relevance this call absorbed is due to the stabiliser and to the bias.

        The conservation ledger calls it (under ``torch.no_grad()``) after :meth:`backward` returned
        ``relevance`` for the same call; nothing calls it otherwise. The default, None, means the rule
        does not split what it absorbed (the ledger then shows only the total, ``R in - R out``).

        Parameters
        ----------
        call : LayerCall
            The module call, as :meth:`backward` saw it.
        grad_outputs : tuple of torch.Tensor
            The upper-layer relevance, one tensor per output.
        relevance : sequence of torch.Tensor or None
            What :meth:`backward` returned, one entry per input.

        Returns
        -------
        Absorption or None
            The two shares, each summed over all entries (use :func:`relevance_total`), or None.
        """
        return None


def make_rule(rule_class: type[Rule], params: Mapping[str, Any]) -> Rule:
    """Construct ``rule_class`` from a parameter mapping (see :func:`make_part`)."""
    return make_part("rule", rule_class, params)


__all__ = (
    "Absorption",
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
    "relevance_total",
    "to_names",
)
