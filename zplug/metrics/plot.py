"""Perturbation curves as a picture (needs matplotlib: ``pip install 'zplug[plot]'``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zplug.errors import PlotUnavailableError
from zplug.metrics.records import MetricResult

_STYLES = {"morf": "-", "lerf": "--"}


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_curves(results: Sequence[MetricResult], path: str | Path, *, title: str = "") -> Path:
    """Draw the mean curves of ``results`` (one colour per method; MoRF solid, LeRF dashed) into a PNG.

    Raises
    ------
    PlotUnavailableError
        If matplotlib is not installed.
    """
    if not have_matplotlib():
        raise PlotUnavailableError("plotting curves needs matplotlib: pip install 'zplug[plot]'")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), dpi=110)
    axes = figure.subplots()
    score = "score"
    for index, result in enumerate(results):
        colour = f"C{index % 10}"
        score = getattr(result.metric, "score", score)
        for number, (order, curve) in enumerate(result.curves.items()):
            label = f"{result.method or 'relevance'}: {result.mean:.3g}" if number == 0 else "_nolegend_"
            axes.plot(curve.fractions.tolist(), curve.mean(), _STYLES.get(order, ":"), color=colour, label=label)
    orders = sorted({order for result in results for order in result.curves})
    axes.set_xlabel("fraction of the input removed (" + ", ".join(
        f"{order.upper()}: {'solid' if order == 'morf' else 'dashed'}" for order in orders) + ")")
    axes.set_ylabel(f"target {'probability' if score == 'softmax' else score}")
    axes.set_title(title or (repr(results[0].metric) if results else ""), fontsize=8)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


__all__ = ("PlotUnavailableError", "have_matplotlib", "plot_curves")
