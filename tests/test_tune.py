"""Tuning presets: search spaces, samplers, layer groups, the resumable trial log and the written preset."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import zplug
from zplug.demo.model import load_model
from zplug.demo.samples import load_samples
from zplug.errors import SpecError
from zplug.tune.groups import layer_group_preset, split
from zplug.tune.log import TrialLog, TrialLogError
from zplug.tune.samplers import GridSampler, RandomSampler, make_sampler
from zplug.tune.search import tune, tuned_preset_document
from zplug.tune.space import Choice, Range, parse_dimension, parse_space
from zplug.tune.writer import OutputExistsError, preset_text, write_text

METRIC = {"patch_size": 8, "steps": 3}


@pytest.fixture(scope="module")
def demo():
    images, labels, _ = load_samples()
    return load_model(), images[::4].contiguous(), labels[::4]  # three samples


def test_parse_dimensions():
    assert parse_dimension("g", "[0.0, 0.5, 1]") == Choice(values=(0.0, 0.5, 1))
    assert parse_dimension("g", "0..2") == Range(low=0.0, high=2.0)
    assert parse_dimension("g", "1e-3..10:log") == Range(low=1e-3, high=10.0, log=True)
    assert list(parse_space(["a=[1]", "b=0..1"])) == ["a", "b"]
    for text, message in [
        ("2..1", "--space g=2..1: the lower bound must be below the upper bound"),
        ("0..1:log", "--space g=0..1:log: a logarithmic range needs positive bounds (got 0)"),
        ("[]", "--space g=[]: give at least one value, e.g. [0.1, 0.25, 1.0]"),
        ("fast", "--space g=fast: expected a list [a, b, c], a range LOW..HIGH, or LOW..HIGH:log"),
    ]:
        with pytest.raises(SpecError, match=f"^{re.escape(message)}$"):
            parse_dimension("g", text)
    with pytest.raises(SpecError, match=r"^--space gamma: given twice$"):
        parse_space(["gamma=[1]", "gamma=[2]"])
    assert Range(low=0.01, high=100.0, log=True).grid(5) == pytest.approx([0.01, 0.1, 1.0, 10.0, 100.0])
    assert Range(low=0.0, high=1.0).grid(3) == [0.0, 0.5, 1.0]


def test_grid_covers_every_point_once_in_a_seeded_order():
    space = {"a": Choice(values=(1, 2, 3)), "b": Range(low=0.0, high=1.0)}
    grid = GridSampler(space, seed=0, grid_points=2)
    points = [tuple(grid.propose(n, []).values()) for n in range(grid.size)]
    assert grid.size == 6 and sorted(points) == [(a, b) for a in (1, 2, 3) for b in (0.0, 1.0)]
    assert points == [tuple(GridSampler(space, seed=0, grid_points=2).propose(n, []).values()) for n in range(6)]
    assert points != [tuple(GridSampler(space, seed=1, grid_points=2).propose(n, []).values()) for n in range(6)]


def test_random_draws_depend_on_seed_and_trial_only():
    space = {"a": Range(low=1e-2, high=1e2, log=True), "b": Choice(values=("x", "y"))}
    sampler = RandomSampler(space, seed=3)
    assert sampler.propose(5, []) == RandomSampler(space, seed=3).propose(5, [({"a": 1.0, "b": "x"}, 0.3)])
    assert sampler.propose(5, []) != sampler.propose(6, [])
    draws = np.array([sampler.propose(n, [])["a"] for n in range(200)])
    assert draws.min() >= 1e-2 and draws.max() <= 1e2
    assert 0.3 < np.mean(draws < 1.0) < 0.7  # log-uniform: half of the draws below the geometric middle


def test_tpe_resumes_as_it_would_have_run():
    pytest.importorskip("optuna", reason="the tpe sampler is optional: pip install 'zplug[tune]'")
    space = {"a": Range(low=0.0, high=1.0), "b": Choice(values=(0, 1))}
    history = []
    sampler = make_sampler("tpe", space, 0, maximize=True)
    for number in range(12):
        values = sampler.propose(number, history)
        history.append((values, -(values["a"] - 0.3) ** 2 + values["b"]))
    fresh = make_sampler("tpe", space, 0, maximize=True)
    assert fresh.propose(12, history) == sampler.propose(12, history)


def test_split():
    assert split(list("abcd"), 3) == [["a", "b"], ["c"], ["d"]]
    assert split(list("ab"), 3) == [["a"], ["b"]]
    assert split(list("abcdefg"), 3) == [["a", "b", "c"], ["d", "e"], ["f", "g"]]


def test_layer_groups_of_the_demo_model(registry):
    model = load_model()
    groups = layer_group_preset(model, "epsilon_gamma_box", low=0.0, high=1.0)
    assert groups.groups == {"low": ("conv2", "conv3"), "mid": ("conv4",), "high": ("conv5",), "dense": ("fc1", "fc2")}
    assert groups.defaults == {"gamma_low": 0.25, "gamma_mid": 0.25, "gamma_high": 0.25, "gamma_dense": 0.0}
    from zplug.preset import Preset
    from zplug.preset.loading import load_preset

    preset = Preset.from_toml(preset_text(groups.document), name="groups")
    merged = preset.merged_into(load_preset("epsilon_gamma_box"))
    mapping = zplug.resolve(model, merged, low=0.0, high=1.0, gamma_low=1.5, gamma_high=3.0, gamma_dense=0.5)
    assert mapping["conv1"].rule_name == "zbox"  # the base's first layer keeps its rule
    assert [mapping[n].params["gamma"] for n in ("conv2", "conv3", "conv4", "conv5")] == [1.5, 1.5, 0.25, 3.0]
    assert mapping["fc2"].rule_name == "gamma" and mapping["fc2"].params["gamma"] == 0.5


def test_tune_runs_resumes_and_writes_a_preset_that_reproduces_its_score(registry, demo, tmp_path, monkeypatch):
    import zplug.tune.search as search

    model, x, y = demo
    space = parse_space(["gamma=[0.0, 1.0, 4.0]"])
    ran = []
    original = search._run
    monkeypatch.setattr(search, "_run", lambda *a: ran.append(a[2]) or original(*a))
    log = tmp_path / "trials.jsonl"
    kwargs = dict(metric="srg", metric_params=METRIC, sampler="grid", seed=1, fixed={"low": 0.0, "high": 1.0}, log=log)
    first = tune(model, x, y, "epsilon_gamma_box", space, trials=2, **kwargs)
    assert ran == [None, 0, 1] and len(first.trials) == 2
    ran.clear()
    second = tune(model, x, y, "epsilon_gamma_box", space, trials=10, **kwargs)  # a grid stops at its 3 points
    assert ran == [2] and [t.number for t in second.trials] == [0, 1, 2]
    assert second.trials[:2] == first.trials and second.default == first.default
    assert sorted(t.params["gamma"] for t in second.trials) == [0.0, 1.0, 4.0]
    assert len(log.read_text().splitlines()) == 1 + 1 + 3  # header, defaults, trials
    # the defaults are the base preset's own values
    assert second.default.params == {"gamma": 0.25}
    best = second.best
    assert best.score == max(t.score for t in (*second.trials, second.default))
    # the written preset extends the base with the best value and gives the same score
    document, comments = tuned_preset_document(second, extends="epsilon_gamma_box")
    path = tmp_path / "tuned.toml"
    write_text(path, preset_text(document, comments), overwrite=False)
    loaded = zplug.load_preset(path)
    assert loaded.params["gamma"].default == best.params["gamma"]
    assert "tuned for srg on" in loaded.summary
    from zplug.evaluation import _metric
    from zplug.tune.objective import Objective

    again = Objective(model, [(x, y)], _metric("srg", METRIC), preset=path, fixed={"low": 0.0, "high": 1.0}, seed=1)()
    assert again.mean == best.score
    with pytest.raises(OutputExistsError, match=r"exists; choose another output or pass --overwrite to replace it$"):
        write_text(path, "x", overwrite=False)


def test_a_log_of_another_run_is_refused_or_restarted(tmp_path):
    path = tmp_path / "trials.jsonl"
    log = TrialLog(path, {"seed": 0, "space": {"g": "[1]"}})
    from zplug.tune.log import TrialRecord

    log.append(TrialRecord(number=0, params={"g": 1}, score=0.5))
    with pytest.raises(TrialLogError, match=r"was written for another run \(it differs in: seed\); use another"):
        TrialLog(path, {"seed": 1, "space": {"g": "[1]"}})
    assert TrialLog(path, {"seed": 0, "space": {"g": "[1]"}}).trials[0].score == 0.5
    restarted = TrialLog(path, {"seed": 1, "space": {"g": "[1]"}}, restart=True)
    assert restarted.trials == {} and len(path.read_text().splitlines()) == 1
    # a last line cut short by an interruption is dropped; that trial runs again
    log = TrialLog(path, {"seed": 1, "space": {"g": "[1]"}})
    log.append(TrialRecord(number=0, params={"g": 1}, score=0.25))
    with path.open("a") as stream:
        stream.write('{"trial": 1, "par')
    resumed = TrialLog(path, {"seed": 1, "space": {"g": "[1]"}})
    assert list(resumed.trials) == [0]
    assert json.loads(path.read_text().splitlines()[-1])["trial"] == 0
    (tmp_path / "other.jsonl").write_text("hello\n")
    with pytest.raises(TrialLogError, match=r"is not a zplug tune trial log; choose another output folder$"):
        TrialLog(tmp_path / "other.jsonl", {})


def test_tune_errors(registry, demo):
    model, x, y = demo
    with pytest.raises(SpecError, match=r"^preset 'epsilon_plus' has no parameter 'gamma' to search \(parameters: "):
        tune(model, x, y, "epsilon_plus", parse_space(["gamma=[1.0]"]))
    with pytest.raises(SpecError, match=r"^parameter 'epsilon' is both searched and fixed; give it once$"):
        tune(model, x, y, "epsilon_plus", parse_space(["epsilon=[1.0]"]), fixed={"epsilon": 0.1})
    with pytest.raises(SpecError, match=r"^the search space is empty: give --space KEY=SPEC \(or --layer-groups\)$"):
        tune(model, x, y, "epsilon_plus", {})
    with pytest.raises(SpecError, match=r"^unknown sampler 'bayes' \(known: grid, random, tpe\)$"):
        tune(model, x, y, "epsilon_plus", parse_space(["epsilon=[1.0]"]), sampler="bayes")


def test_no_better_trial_keeps_the_defaults(registry, demo):
    model, x, y = demo
    result = tune(model, x[:1], y[:1], "epsilon_plus", parse_space(["epsilon=[1e-6]"]), metric_params=METRIC,
                  sampler="grid")
    assert result.trials[0].score == result.default.score  # the same values as the defaults
    assert result.best is result.default and not result.improved
    assert torch.is_tensor(x)
