"""Route functional pooling and means through pooling modules, module by module (``torch.fx``).

``F.avg_pool2d(x, 3, stride=1, padding=1)`` in a forward (torchvision's inception_v3 does this)
or ``x.mean([2, 3])`` (ShuffleNetV2's global pooling) is no module call, so no rule sees it: the
plain gradient of an average is not the ``norm`` rule that ``avgpool`` layers get, and relevance
is lost or created. :class:`FunctionalPooling` replaces such calls (with constant arguments) by
the equivalent ``torch.nn`` pooling module or a :class:`zplug.layers.Mean`, registered as
children of the module whose forward made the call, for the duration; presets then give them the
``avgpool``/``maxpool`` rules. Each rewritten forward is compared with the original on its first
call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import attrs

from zplug.canonizers.rewrite import ForwardRewrite, Rewrite

if TYPE_CHECKING:
    import torch

_POOLS = frozenset({"pool"})


@attrs.frozen(kw_only=True)
class FunctionalPooling(ForwardRewrite):
    """Make functional pooling (``F.avg_pool2d``, ``F.max_pool2d``, adaptive variants) and means module calls.

    Children added for the duration: ``pool`` (``torch.nn.AvgPool2d``, ``MaxPool2d``, ...; ``_1``,
    ``_2`` ... if taken) and ``mean`` (:class:`zplug.layers.Mean`). Calls whose kernel or output
    size is computed from the input, and max pooling that returns indices, stay as they are (the
    coverage analysis reports them).
    """

    name: ClassVar[str] = "functional_pooling"
    summary: ClassVar[str] = "route functional avg/max pooling and means through pooling modules (torch.fx)"

    def rewrites(self, model: torch.nn.Module) -> list[Rewrite]:
        """One rewrite per module with functional pooling or means."""
        from zplug.canonizers._attention_impl import functional_rewrites

        return functional_rewrites(model, _POOLS)[0]

    def describe(self, model: torch.nn.Module) -> list[str]:
        """One line per rewritten module."""
        return [f"{r.name or '<model>'} ({type(r.module).__name__}): {r.what}" for r in self.rewrites(model)]


def pooling_calls(model: torch.nn.Module) -> list[str]:
    """Names of the modules whose own forward calls functional pooling or a mean that can be routed."""
    from zplug.canonizers._attention_impl import _Builder, _candidates, _trace_own

    found = []
    for name, module in _candidates(model):
        try:
            graph, _ = _trace_own(module)
        except Exception:  # noqa: BLE001 -- untraceable modules are reported by the coverage analysis
            continue
        if _Builder(module, graph, _POOLS).rewrite():
            found.append(name or "<model>")
    return found


__all__ = ("FunctionalPooling", "pooling_calls")
