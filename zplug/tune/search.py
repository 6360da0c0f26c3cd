"""``zplug.tune.tune``: search a preset's parameters for the most faithful explanations on a data set."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from zplug.errors import SpecError
from zplug.metrics.base import Metric
from zplug.tune.log import TrialLog, TrialRecord
from zplug.tune.objective import Batch, Objective
from zplug.tune.samplers import make_sampler
from zplug.tune.space import Dimension, describe_space

#: ``progress(trials_done, trials)`` after each trial.
TrialProgress = Callable[[int, int], None]


@attrs.frozen(kw_only=True)
class TuneResult:
    """What a search found.

    Attributes
    ----------
    preset : str
        The searched preset, as given.
    metric : Metric
        The metric that scored each trial.
    space : dict of str to str
        The searched parameters and their ranges, as written on the command line.
    sampler : str
        ``grid``, ``random`` or ``tpe``.
    seed : int
        The seed of the sampler and the evaluation.
    default : TrialRecord
        The preset with its default values.
    trials : tuple of TrialRecord
        Every trial, in order.
    higher_is_better : bool
        Whether the search maximised the score.
    samples : int
        The number of samples scored per trial.
    """

    preset: str
    metric: Metric
    space: dict[str, str]
    sampler: str
    seed: int
    default: TrialRecord
    trials: tuple[TrialRecord, ...]
    higher_is_better: bool
    samples: int

    @property
    def best(self) -> TrialRecord:
        """The best trial (the earliest of equal scores); the defaults if no trial beat them."""
        best = self.default
        for record in self.trials:
            if record.score > best.score if self.higher_is_better else record.score < best.score:
                best = record
        return best

    @property
    def improved(self) -> bool:
        """Whether a trial scored better than the defaults."""
        return self.best.number is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "preset": self.preset,
            "metric": self.metric.name,
            "metric_params": {k: v for k, v in self.metric.params().items() if not isinstance(v, torch.Tensor)},
            "space": self.space,
            "sampler": self.sampler,
            "seed": self.seed,
            "samples": self.samples,
            "higher_is_better": self.higher_is_better,
            "default": self.default.to_json(),
            "best": self.best.to_json(),
            "trials": len(self.trials),
        }


def as_batches(inputs: torch.Tensor | Sequence[Batch], target: Any, batch_size: int) -> list[Batch]:
    """Split ``inputs`` (a tensor, with ``target``) into batches, or take a list of ``(inputs, target)``."""
    if not isinstance(inputs, torch.Tensor):
        return [(x, t) for x, t in inputs]
    out = []
    for start in range(0, inputs.shape[0], batch_size):
        part = slice(start, start + batch_size)
        if target is None or isinstance(target, int):
            out.append((inputs[part], target))
        else:
            out.append((inputs[part], torch.as_tensor(target)[part]))
    return out


def tune(
    model: torch.nn.Module,
    inputs: torch.Tensor | Sequence[Batch],
    target: Any,
    preset: str | Path,
    space: Mapping[str, Dimension],
    *,
    metric: str | Metric = "srg",
    metric_params: Mapping[str, Any] | None = None,
    sampler: str = "random",
    trials: int = 100,
    seed: int = 0,
    fixed: Mapping[str, Any] | None = None,
    grid_points: int = 5,
    log: str | os.PathLike | None = None,
    config: Mapping[str, Any] | None = None,
    restart: bool = False,
    batch_size: int = 64,
    max_memory: int = 256 * 2**20,
    strict: bool = False,
    progress: TrialProgress | None = None,
) -> TuneResult:
    """Search ``space`` for the values of ``preset``'s parameters that score best on ``metric``.

    Parameters
    ----------
    model : torch.nn.Module
        The model, in evaluation mode.
    inputs : tensor or sequence of (inputs, target)
        The data set, as one tensor (split into batches of ``batch_size``) or as batches.
    target : None, int or sequence of int
        The explained class (``None``: the predicted one); ignored for batches.
    preset : str or Path
        The preset to tune (a name or a TOML file).
    space : mapping of str to Choice or Range
        The searched parameters (see :mod:`zplug.tune.space`); each must be a parameter of the preset.
    metric : str or Metric
        The score (the mean over the samples); maximised if the metric says higher is better.
    metric_params : mapping or None
        Parameters for a metric given by name.
    sampler : str
        ``"grid"``, ``"random"`` or ``"tpe"`` (needs optuna).
    trials : int
        How many parameter sets to try (a grid stops at its size).
    seed : int
        Seeds the sampler and the evaluation: the same seed gives the same trials and scores.
    fixed : mapping or None
        Preset parameters that are not searched (e.g. ``low`` and ``high``).
    grid_points : int
        Values per range in a grid search.
    log : path or None
        A JSON-lines trial log: finished trials found in it are not run again (see :mod:`zplug.tune.log`).
    config : mapping or None
        More configuration recorded in (and checked against) the log, e.g. which data set.
    restart : bool
        Start the log afresh if it was written for another configuration (else that is an error).
    batch_size, max_memory : int
        Inputs per batch (tensor ``inputs``) and the evaluation's bounds (:func:`zplug.evaluate`).
    strict : bool
        Fail if a module with parameters gets no rule.
    progress : callable or None
        ``progress(trials_done, trials)`` after the defaults and after each trial.
    """
    from zplug.evaluation import _metric
    from zplug.preset.loading import load_preset

    metric = _metric(metric, dict(metric_params or {}))
    loaded = load_preset(preset)
    unknown = [key for key in space if key not in loaded.params]
    if unknown:
        known = ", ".join(loaded.params) or "none"
        raise SpecError(f"preset '{loaded.name}' has no parameter '{unknown[0]}' to search (parameters: {known})")
    clash = [key for key in space if key in (fixed or {})]
    if clash:
        raise SpecError(f"parameter '{clash[0]}' is both searched and fixed; give it once")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise SpecError(f"trials must be an integer >= 1 (got {trials!r})")
    maximize = metric.higher_is_better
    chooser = make_sampler(sampler, space, seed, maximize=maximize, grid_points=grid_points)
    if chooser.size is not None:
        trials = min(trials, chooser.size)
    batches = as_batches(inputs, target, batch_size)
    objective = Objective(
        model, batches, metric, preset=loaded, fixed=fixed, seed=seed, batch_size=batch_size, max_memory=max_memory,
        strict=strict,
    )
    run_config = {
        "preset": str(preset),
        "metric": repr(metric),
        "space": describe_space(space),
        "sampler": sampler,
        "seed": seed,
        "grid_points": grid_points if sampler == "grid" else None,
        "fixed": {k: _plain(v) for k, v in (fixed or {}).items()},
        **dict(config or {}),
    }
    book = TrialLog(Path(log), run_config, restart=restart) if log is not None else None
    default = book.default if book is not None else None
    done = 0
    if default is None:
        default = _run(objective, {}, None, {key: _default(loaded, key) for key in space})
        if book is not None:
            book.append(default)
    done += 1
    if progress is not None:
        progress(done, trials + 1)
    records: list[TrialRecord] = []
    for number in range(trials):
        known = book.trials.get(number) if book is not None else None
        if known is None:
            values = chooser.propose(number, [(r.params, r.score) for r in records])
            known = _run(objective, values, number, values)
            if book is not None:
                book.append(known)
        records.append(known)
        if progress is not None:
            progress(number + 2, trials + 1)
    return TuneResult(
        preset=str(preset), metric=metric, space=describe_space(space), sampler=sampler, seed=seed, default=default,
        trials=tuple(records), higher_is_better=maximize, samples=sum(x.shape[0] for x, _ in batches),
    )


def _default(preset: Any, key: str) -> Any:
    decl = preset.params[key]
    return None if decl.required else _plain(decl.default)


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


def _run(objective: Objective, params: Mapping[str, Any], number: int | None, shown: Mapping[str, Any]) -> TrialRecord:
    start = time.perf_counter()
    result = objective(params)
    return TrialRecord(
        number=number, params=dict(shown), score=result.mean, scores=tuple(result.scores.tolist()),
        seconds=round(time.perf_counter() - start, 3),
    )


def tuned_preset_document(
    result: TuneResult,
    *,
    extends: str,
    base: str | None = None,
    base_document: Mapping[str, Any] | None = None,
    data: str = "",
) -> tuple[dict[str, Any], list[str]]:
    """The tuned preset (``extends`` the base with the best values) and its comment lines.

    Parameters
    ----------
    result : TuneResult
        The search.
    extends : str
        How the tuned preset names its parent: a preset name, or a path relative to the tuned file.
    base : str or None
        The base preset's name for the summary (default: the searched preset).
    base_document : mapping or None
        A preset document to start from (the layer-group preset), whose parameter defaults are
        replaced; otherwise a preset that only sets the searched parameters.
    data : str
        The samples, e.g. ``32 inputs from data/tune`` (default: their number).
    """
    best = result.best
    data = data or f"{result.samples} inputs"
    summary = (
        f"{base or result.preset} tuned for {result.metric.name} on {data}: {best.score:.6g} "
        f"(defaults {result.default.score:.6g}), {result.sampler} search, seed {result.seed}"
    )
    document: dict[str, Any] = dict(base_document or {"schema": 1})
    document["summary"] = summary
    document["extends"] = extends
    params = dict(document.get("params", {}))
    for key, value in best.params.items():
        searched = result.space.get(key, "")
        default = result.default.params.get(key)
        params[key] = {"default": value, "doc": f"tuned by zplug tune over {searched} (default {default!r})"}
    document["params"] = params
    order = ["schema", "summary", "extends", "params"]
    document = {k: document[k] for k in order if k in document} | {k: v for k, v in document.items() if k not in order}
    comments = [
        "Written by `zplug tune`: a preset is data, so this file is the result of the search.",
        f"metric: {result.metric!r} ({'higher' if result.higher_is_better else 'lower'} is better), mean over "
        f"{result.samples} samples",
        f"searched: {', '.join(f'{k}={v}' for k, v in result.space.items())}; {len(result.trials)} trials "
        f"({result.sampler}, seed {result.seed})",
        f"best: trial {best.number}, score {best.score!r}; defaults: {result.default.score!r}"
        if best.number is not None else f"no trial beat the defaults ({result.default.score!r})",
    ]
    return document, comments


__all__ = ("TuneResult", "as_batches", "tune", "tuned_preset_document")
