"""LRP-epsilon with an epsilon relative to the scale of each layer's pre-activations."""

from __future__ import annotations

import attrs

from zplug.errors import RelevanceError
from zplug.rules import Absorption, Rule, non_negative, parameter, relevance_total


@attrs.frozen(kw_only=True)
class EpsilonScaled(Rule):
    """LRP-epsilon whose epsilon is relative to the root mean square of the layer's output.

    For each sample, with ``z`` the layer's pre-activations (its output) and
    ``s = sqrt(mean(z**2))`` over all of the sample's output entries::

        R_i = x_i * sum_j w_ji * R_j / (z_j + epsilon * s * sign(z_j))

    where ``sign(0) = +1``. Plain LRP-epsilon adds the same absolute epsilon in every layer,
    so its effect depends on how large each layer's activations happen to be; here epsilon
    is a fraction of the layer's typical output, and scaling a layer's weights and bias by
    ``c > 0`` leaves the relevance unchanged. A sample whose outputs are all exactly zero
    passes no relevance through the layer (there is nothing to be proportional to).
    """

    name = "epsilon_scaled"
    summary = "LRP-epsilon with epsilon relative to the RMS of each sample's pre-activations"
    epsilon: float = parameter(
        0.01, doc="fraction of the RMS of each sample's pre-activations added to the denominator",
        kind="number >= 0", check=non_negative,
    )  # fmt: skip

    def backward(self, call, grad_outputs):
        """Return ``x * transpose(R / stabilised z)`` for each input of the layer."""
        import torch  # here, not at the top: registering and checking the rule then needs no torch

        from zplug import stabilize

        if len(grad_outputs) != 1:
            raise RelevanceError(f"rule '{self.name}' needs a layer with one output; '{call.name}' has several")
        z = call.output
        denominator = stabilize(z, self.epsilon, norm_scale=True)
        dead = denominator == 0  # only where a whole sample's outputs are zero
        scaled = torch.where(dead, 0.0, grad_outputs[0] / torch.where(dead, 1.0, denominator))
        return tuple(x * g for x, g in zip(call.inputs, call.op.transpose(scaled, call.inputs, call.params())))

    def absorption(self, call, grad_outputs, relevance):
        """Split what the layer absorbed for the conservation ledger (``zplug.explain(..., ledger=True)``).

        The stabiliser takes ``R_j (d_j - z_j) / d_j`` with ``d_j`` the stabilised denominator, and the
        whole relevance of a sample whose outputs are all zero (the rule drops it). The rest is the
        bias's share ``R_j b_j / d_j``: the inputs' contributions add up to ``z_j - b_j``.
        """
        import torch

        from zplug import stabilize

        if len(grad_outputs) != 1:
            return None
        z, upper = call.output, grad_outputs[0]
        denominator = stabilize(z, self.epsilon, norm_scale=True)
        dead = denominator == 0
        share = torch.where(dead, upper, upper * (denominator - z) / torch.where(dead, 1.0, denominator))
        stabilizer = relevance_total(share)
        absorbed = relevance_total(upper) - sum(relevance_total(r) for r in relevance)
        return Absorption(stabilizer=stabilizer, bias=absorbed - stabilizer)
