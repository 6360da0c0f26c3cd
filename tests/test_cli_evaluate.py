"""``zplug evaluate`` and ``zplug tune`` as a user runs them, checked against the Python API on the same images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import zplug
from zplug.cli import main
from zplug.demo.model import load_model
from zplug.demo.samples import samples_dir

FOLDER = samples_dir() / "triangle"  # three unlabelled images
METRIC = ["--metric", "srg", "--metric-param", "patch_size=8", "--metric-param", "steps=3"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def images() -> torch.Tensor:
    from PIL import Image

    files = sorted(FOLDER.glob("*.png"))
    arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255 for f in files]
    return torch.from_numpy(np.stack(arrays))


def test_evaluate_writes_what_the_api_computes(registry, capsys, tmp_path):
    out = tmp_path / "eval"
    status, stdout, _ = run(
        capsys, "evaluate", str(FOLDER), "--demo", "--preset", "epsilon_plus", "--attributor", "gradient", *METRIC,
        "--metric", "region_perturbation", "--metric-param", "regions=3", "--out", str(out),
    )
    assert status == 0, stdout
    header = stdout.splitlines()[0]
    assert header.split() == ["method", "srg", "(higher", "is", "better)", "region_perturbation", "(higher", "is",
                              "better)"]
    assert [line.split()[0] for line in stdout.splitlines()[2:5]] == ["epsilon_plus", "gradient", "random"]
    results = json.loads((out / "results.json").read_text())
    model, x = load_model(), images()
    mapping = zplug.resolve(model, "epsilon_plus")
    relevance = zplug.explain(model, x, mapping=mapping).relevance
    expected = zplug.evaluate(model, x, None, relevance, metric="srg", patch_size=8, steps=3)
    (got,) = [r for r in results["results"] if r["method"] == "epsilon_plus" and r["metric"] == "srg"]
    np.testing.assert_allclose(got["scores"], expected.scores.numpy(), rtol=0, atol=1e-6)
    (rp,) = [r for r in results["results"] if r["method"] == "random" and r["metric"] == "region_perturbation"]
    random = zplug.evaluate(model, x, None, "random", metric="region_perturbation", patch_size=8, regions=3)
    np.testing.assert_allclose(rp["scores"], random.scores.numpy(), rtol=0, atol=1e-6)
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 3 * 2 * 3 and rows[0].keys() == {"method", "metric", "index", "file", "target", "score"}
    assert float(rows[0]["score"]) == pytest.approx(expected.scores[0].item(), abs=1e-6)
    pytest.importorskip("matplotlib", reason="curve plots are optional: pip install 'zplug[plot]'")
    assert (out / "curves" / "srg.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run refuses to replace the files
    status, _, err = run(capsys, "evaluate", str(FOLDER), "--demo", "--preset", "epsilon_plus", *METRIC, "--out",
                         str(out))
    assert status == 2
    assert err == f"zplug: error: '{out / 'results.json'}' exists; choose another output or pass --overwrite to " \
        "replace it\n"


@pytest.mark.parametrize(("args", "message"), [
    ((), "no method: give --preset NAME|FILE and/or --attributor NAME (e.g. --attributor gradient)"),
    (("--preset", "epsilon_plus", "--metric-param", "patch=3"),
     "--metric-param patch: no metric of this run has a parameter 'patch' (valid: baseline, blur_sigma, patch_size, "
     "score, steps)"),
    (("--preset", "epsilon_plus", "--param", "gamma=0.5"),
     "--param gamma: no method of this run has a parameter 'gamma' (valid: epsilon, stabilizer, zero_params)"),
    (("--preset", "epsilon_plus", "--metric", "srg", "--metric", "srg"),
     "--metric srg is given twice; run twice to compare its parameters"),
])
def test_evaluate_errors(registry, capsys, args, message):
    status, _, err = run(capsys, "evaluate", str(FOLDER), "--demo", *args)
    assert status == 2
    assert err == f"zplug: error: {message}\n"


def test_tune_writes_a_checked_preset_and_resumes(registry, capsys, tmp_path):
    out = tmp_path / "tune"
    args = ["tune", str(FOLDER), "--demo", "--preset", "epsilon_gamma_box", "--space", "gamma=[1.0, 0.0]", *METRIC,
            "--sampler", "grid", "--out", str(out)]
    status, stdout, err = run(capsys, *args)
    assert status == 0, err
    assert "2 trials (grid, seed 0)" in stdout
    preset = out / "epsilon_gamma_box_tuned.toml"
    assert run(capsys, "check", str(preset))[0] == 0
    summary = json.loads((out / "epsilon_gamma_box_tuned.summary.json").read_text())
    best = summary["best"]
    # the written preset reproduces the best score (relevance of the tuned preset, the same metric and seed)
    model, x = load_model(), images()
    relevance = zplug.explain(model, x, preset=preset, low=0.0, high=1.0).relevance
    again = zplug.evaluate(model, x, None, relevance, metric="srg", patch_size=8, steps=3)
    # float32 relevance: tune and this call may batch differently, which moves the score by round-off only
    assert again.mean == pytest.approx(best["score"], abs=1e-7)
    assert zplug.load_preset(preset).params["gamma"].default == best["params"]["gamma"]
    tuned_row = summary["comparison"]["tune"]["epsilon_gamma_box_tuned (tuned)"]
    assert tuned_row["mean"] == pytest.approx(best["score"], abs=1e-7)
    # the output exists: refused without --overwrite; with it, the log is resumed (no trial runs again)
    status, _, err = run(capsys, *args)
    assert status == 2 and "epsilon_gamma_box_tuned.toml' exists; choose another output or pass --overwrite" in err
    log = (out / "trials.jsonl").read_text()
    status, _, err = run(capsys, *args, "--overwrite")
    assert status == 0, err
    assert (out / "trials.jsonl").read_text() == log
    # another search space in the same folder is refused (the log belongs to another run)
    status, _, err = run(capsys, *[a if a != "gamma=[1.0, 0.0]" else "gamma=[2.0]" for a in args], "--overwrite",
                         "--name", "other")
    assert status == 0 and json.loads((out / "trials.jsonl").read_text().splitlines()[0])["config"]["space"] == {
        "gamma": "[2.0]"}
    status, _, err = run(capsys, *[a if a != "gamma=[1.0, 0.0]" else "gamma=[3.0]" for a in args], "--name", "third")
    assert status == 2 and "was written for another run (it differs in: space)" in err


def test_tune_layer_groups(registry, capsys, tmp_path):
    out = tmp_path / "groups"
    status, stdout, err = run(
        capsys, "tune", str(FOLDER), "--demo", "--preset", "epsilon_gamma_box", "--layer-groups", "--space",
        "gamma_high=[2.0]", *METRIC, "--out", str(out), "--trials", "1", "--holdout", str(samples_dir() / "cross"),
    )
    assert status == 0, err
    assert "tuned epsilon_gamma_box with layer groups" in stdout and "holdout set" in stdout
    tuned = zplug.load_preset(out / "epsilon_gamma_box_tuned.toml")
    assert tuned.params["gamma_high"].default == 2.0 and tuned.params["gamma_low"].default == 0.25
    mapping = zplug.resolve(load_model(), tuned, low=0.0, high=1.0)
    assert mapping["conv5"].params["gamma"] == 2.0 and mapping["conv1"].rule_name == "zbox"
    assert (out / "groups.toml").exists()


def test_evaluate_json_on_stdout_keeps_the_table_on_stderr(registry, capsys):
    status, stdout, stderr = run(capsys, "evaluate", str(FOLDER), "--demo", "--attributor", "gradient", "--no-random",
                                 *METRIC, "--json", "-")
    assert status == 0
    document = json.loads(stdout)
    assert [r["method"] for r in document["results"]] == ["gradient"] and document["results"][0]["n"] == 3
    assert stderr.startswith("method ")
