"""SmoothGrad: the gradient averaged over noisy copies of the input."""

from __future__ import annotations

import attrs

from zplug._lazy import lazy_module
from zplug.attributors.base import Attributor, Problem, Tensors, chunk_size_parameter, chunks, positive_int
from zplug.parts import non_negative, parameter

torch = lazy_module("torch")  # imported when relevance is computed, not to declare the attributor


@attrs.frozen(kw_only=True)
class SmoothGrad(Attributor):
    """SmoothGrad: the mean (rule-modified) gradient over ``n_iter`` noisy copies of the input.

    **Every** copy is noisy: ``x + N(0, std^2)`` with ``std = noise_level * (max(x) - min(x))``
    per sample (over all but the batch dimension). The noise is drawn in sample order with
    ``torch.randn_like`` for each copy, so results are reproducible with ``torch.manual_seed``
    and do not depend on ``chunk_size``. The returned output is that of the clean input.
    ``noise_level=0`` gives the gradient.
    """

    name = "smoothgrad"
    summary = "mean gradient over noisy copies of the input (all copies noisy)"
    noise_level: float = parameter(
        0.1, doc="noise std as a fraction of each sample's value range (max - min)", kind="number >= 0",
        check=non_negative,
    )
    n_iter: int = parameter(20, doc="number of noisy copies", kind="integer >= 1", check=positive_int)
    chunk_size: int = chunk_size_parameter()

    def attribute(self, problem: Problem) -> tuple[torch.Tensor, Tensors]:
        """Return ``(clean output, mean gradient over the noisy copies)``."""
        output = problem.clean_output()
        relevance_fn = problem.output_relevance(output)
        stds = tuple(self.noise_level * _value_range(x) for x in problem.inputs)
        total = tuple(torch.zeros_like(x) for x in problem.inputs)
        for part in chunks(self.n_iter, self.chunk_size):
            noisy = tuple(
                torch.cat([x + torch.randn_like(x) * std for _ in part]) for x, std in zip(problem.inputs, stds)
            )
            _, grads = problem.gradient(noisy, relevance_fn)
            total = tuple(t + g.reshape(len(part), *t.shape).sum(0) for t, g in zip(total, grads))
            problem.report(part.stop, self.n_iter)
        return output, tuple(t / self.n_iter for t in total)


def _value_range(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, x.ndim))
    if not dims:
        return torch.zeros_like(x)
    return x.amax(dims, keepdim=True) - x.amin(dims, keepdim=True)


__all__ = ("SmoothGrad",)
