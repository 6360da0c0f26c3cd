"""How ``zplug tune`` picks the parameter values of each trial: grid, random, or TPE (optuna).

Every sampler is reproducible by its seed and resumable: the values of trial ``n`` depend only on
the seed, ``n`` and the trials before it (their values and scores), never on whether the run was
interrupted in between.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zplug.errors import SpecError
from zplug.tune.space import Choice, Dimension

#: The built-in samplers and the optional one.
SAMPLERS = ("grid", "random", "tpe")
#: A finished trial: its parameter values and score.
Trial = tuple[Mapping[str, Any], float]


class GridSampler:
    """Every combination of the dimensions' grid values, in an order shuffled by the seed.

    The shuffle makes a run that stops before the end of the grid (``trials`` smaller than the
    grid) cover it evenly; a run with more trials continues the same order.
    """

    def __init__(self, space: Mapping[str, Dimension], seed: int, grid_points: int = 5) -> None:
        self.keys = list(space)
        values = [space[key].grid(grid_points) for key in self.keys]
        self.points = list(itertools.product(*values))
        self.order = np.random.default_rng(seed).permutation(len(self.points))

    @property
    def size(self) -> int:
        """The number of grid points (the most trials a grid search runs)."""
        return len(self.points)

    def propose(self, number: int, history: Sequence[Trial]) -> dict[str, Any]:
        """The values of trial ``number`` (0-based)."""
        return dict(zip(self.keys, self.points[int(self.order[number])]))


class RandomSampler:
    """Independent draws; trial ``n`` uses the generator seeded with ``(seed, n)``."""

    size = None

    def __init__(self, space: Mapping[str, Dimension], seed: int) -> None:
        self.space = dict(space)
        self.seed = seed

    def propose(self, number: int, history: Sequence[Trial]) -> dict[str, Any]:
        """The values of trial ``number``."""
        rng = np.random.default_rng([self.seed, number])
        return {key: dim.draw(rng) for key, dim in self.space.items()}


class TPESampler:
    """Optuna's tree-structured Parzen estimator, given every finished trial before each proposal.

    The sampler is created anew for each trial with the seed ``(seed, n)``, so a resumed run
    proposes what an uninterrupted one would have.
    """

    size = None

    def __init__(self, space: Mapping[str, Dimension], seed: int, *, maximize: bool) -> None:
        try:
            import optuna
        except ImportError:
            raise SpecError(
                "the tpe sampler needs optuna: pip install 'zplug[tune]' (or use --sampler random or grid)"
            ) from None
        self.optuna = optuna
        self.seed = seed
        self.maximize = maximize
        self.distributions = {key: self._distribution(dim) for key, dim in space.items()}

    def _distribution(self, dim: Dimension) -> Any:
        dists = self.optuna.distributions
        if isinstance(dim, Choice):
            return dists.CategoricalDistribution(list(dim.values))
        return dists.FloatDistribution(dim.low, dim.high, log=dim.log)

    def propose(self, number: int, history: Sequence[Trial]) -> dict[str, Any]:
        """The values of trial ``number`` after ``history``."""
        optuna = self.optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = int(np.random.default_rng([self.seed, number]).integers(2**31))
        study = optuna.create_study(
            direction="maximize" if self.maximize else "minimize", sampler=optuna.samplers.TPESampler(seed=seed)
        )
        for params, score in history:
            study.add_trial(
                optuna.trial.create_trial(params=dict(params), distributions=self.distributions, value=score)
            )
        trial = study.ask(self.distributions)
        return dict(trial.params)


def make_sampler(name: str, space: Mapping[str, Dimension], seed: int, *, maximize: bool, grid_points: int = 5):
    """Build the sampler called ``name`` (``grid``, ``random`` or ``tpe``)."""
    if not space:
        raise SpecError("the search space is empty: give --space KEY=SPEC (or --layer-groups)")
    if name == "grid":
        return GridSampler(space, seed, grid_points)
    if name == "random":
        return RandomSampler(space, seed)
    if name == "tpe":
        return TPESampler(space, seed, maximize=maximize)
    raise SpecError(f"unknown sampler '{name}' (known: {', '.join(SAMPLERS)})")


__all__ = ("SAMPLERS", "GridSampler", "RandomSampler", "TPESampler", "Trial", "make_sampler")
