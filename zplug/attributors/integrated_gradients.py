"""Integrated Gradients: the gradient integrated along the straight path from a baseline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

import attrs

from zplug._lazy import lazy_module
from zplug.attributors.base import Attributor, Problem, Tensors, chunk_size_parameter, chunks, positive_int
from zplug.errors import SpecError
from zplug.parts import parameter

torch = lazy_module("torch")  # imported when relevance is computed, not to declare the attributor
np = lazy_module("numpy")

#: Quadrature rules on [0, 1]: ``method -> n -> (alphas, weights)``.
METHODS: dict[str, Callable[[int], tuple[list[float], list[float]]]] = {
    "riemann_right": lambda n: ([(k + 1) / n for k in range(n)], [1 / n] * n),
    "riemann_left": lambda n: ([k / n for k in range(n)], [1 / n] * n),
    "riemann_middle": lambda n: ([(k + 0.5) / n for k in range(n)], [1 / n] * n),
    "riemann_trapezoid": lambda n: (
        [k / (n - 1) for k in range(n)] if n > 1 else [1.0],
        [0.5 / (n - 1) if k in (0, n - 1) else 1 / (n - 1) for k in range(n)] if n > 1 else [1.0],
    ),
    "gausslegendre": lambda n: _gauss_legendre(n),
}


def _gauss_legendre(n: int) -> tuple[list[float], list[float]]:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return [float(a) for a in (nodes + 1) / 2], [float(w) for w in weights / 2]


def _check_baseline(name: str, value: Any) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if callable(v) or isinstance(v, torch.Tensor) or (isinstance(v, Real) and not isinstance(v, bool)):
            continue
        raise SpecError(
            f"parameter '{name}' must be a number, a tensor, a callable f(input) -> baseline, or a tuple of these "
            f"per input (got {v!r})"
        )


def _check_method(name: str, value: Any) -> None:
    if value not in METHODS:
        raise SpecError(f"parameter '{name}' must be one of {', '.join(METHODS)} (got {value!r})")


@attrs.frozen(kw_only=True)
class IntegratedGradients(Attributor):
    """Integrated Gradients: ``(x - b) * integral_0^1 grad f(b + a (x - b)) da``.

    The integral is a quadrature with ``n_iter`` points: ``riemann_right`` (the default, as
    Zennit: points ``1/n, 2/n, ..., 1``), ``riemann_left``, ``riemann_middle``,
    ``riemann_trapezoid`` or ``gausslegendre`` (as Captum's ``method``). With plain gradients
    the relevance sums to ``f(x) - f(b)`` up to the quadrature error (completeness).
    ``n_iter=1`` with ``riemann_right`` gives gradient times ``(x - b)``.
    """

    name = "integrated_gradients"
    summary = "gradient integrated along the path from a baseline, times (input - baseline)"
    baseline: Any = parameter(
        0.0, doc="the baseline: a number, a tensor, a callable f(input), or a tuple of these per input",
        kind="number, tensor or callable", check=_check_baseline,
    )
    n_iter: int = parameter(20, doc="number of points on the path", kind="integer >= 1", check=positive_int)
    method: str = parameter("riemann_right", doc="quadrature rule", kind="name", check=_check_method)
    chunk_size: int = chunk_size_parameter()

    def baselines(self, inputs: Sequence[torch.Tensor]) -> Tensors:
        """Return the baseline of each input, broadcast to its shape."""
        values = self.baseline if isinstance(self.baseline, tuple) else (self.baseline,) * len(inputs)
        if len(values) != len(inputs):
            raise SpecError(f"parameter 'baseline' has {len(values)} entries for {len(inputs)} inputs")
        out = []
        for value, x in zip(values, inputs):
            b = value(x) if callable(value) and not isinstance(value, torch.Tensor) else value
            b = torch.as_tensor(b, dtype=x.dtype, device=x.device)
            try:
                out.append(b.expand_as(x))
            except RuntimeError:
                raise SpecError(
                    f"the baseline of shape {tuple(b.shape)} does not broadcast to the input of shape {tuple(x.shape)}"
                ) from None
        return tuple(out)

    def attribute(self, problem: Problem) -> tuple[torch.Tensor, Tensors]:
        """Return ``(clean output, integrated gradients)``."""
        output = problem.clean_output()
        relevance_fn = problem.output_relevance(output)
        alphas, weights = METHODS[self.method](self.n_iter)
        bases = self.baselines(problem.inputs)
        deltas = tuple(x - b for x, b in zip(problem.inputs, bases))
        total = tuple(torch.zeros_like(x) for x in problem.inputs)
        for part in chunks(self.n_iter, self.chunk_size):
            points = tuple(torch.cat([b + alphas[k] * d for k in part]) for b, d in zip(bases, deltas))
            _, grads = problem.gradient(points, relevance_fn)
            w = torch.tensor([weights[k] for k in part], dtype=total[0].dtype, device=total[0].device)
            total = tuple(
                t + (g.reshape(len(part), *t.shape) * w.reshape(-1, *([1] * t.ndim))).sum(0)
                for t, g in zip(total, grads)
            )
            problem.report(part.stop, self.n_iter)
        return output, tuple(t * d for t, d in zip(total, deltas))


__all__ = ("METHODS", "IntegratedGradients")
