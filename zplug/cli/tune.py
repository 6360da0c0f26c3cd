"""``zplug tune``: search a preset's parameters for the most faithful explanations (see docs/evaluation.md)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  zplug tune data/tune --demo --preset epsilon_gamma_box --space gamma=0.01..10:log --trials 50 --out results/tune
  zplug tune data/tune --demo --preset epsilon_gamma_box --layer-groups --space gamma_low=0..2 \\
      --space gamma_mid=0..2 --space gamma_high=0..2 --space gamma_dense=[0.0,0.1,1.0] --holdout data/holdout
  zplug tune imgs/ --model vgg16 --weights vgg16.pth --preset epsilon_gamma_box --sampler tpe --trials 100

Rerunning the same command resumes: trials found in OUT/trials.jsonl are not run again.
"""


def add_parser(subparsers) -> None:
    """Register the ``tune`` sub-command."""
    from zplug.cli._dataset import add_data_arguments

    parser = subparsers.add_parser(
        "tune",
        help="search a preset's parameters for the best faithfulness metric score; writes a tuned preset",
        description="Search the [params] of a preset (grid, random or TPE search) for the values that score best on "
        "a faithfulness metric over a data set, and write a preset that extends the base with them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_arguments(parser, inputs_help="the tuning images: files, folders or ImageFolder trees; with --demo and no "
                       "INPUT: the bundled sample images")
    group = parser.add_argument_group("search")
    group.add_argument("--preset", required=True, metavar="NAME|FILE", help="the preset to tune")
    group.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                       help="a searched parameter: a list [a, b, c], a range LOW..HIGH, or LOW..HIGH:log; repeatable")
    group.add_argument("--layer-groups", action="store_true",
                       help="give the low, middle and high convolutions and the dense layers their own gamma "
                       "(parameters gamma_low, gamma_mid, gamma_high, gamma_dense; written to OUT/groups.toml)")
    group.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="a preset parameter kept fixed (TOML value); repeatable")
    group.add_argument("--metric", default="srg", metavar="NAME", help="the metric to optimise (default: srg)")
    group.add_argument("--metric-param", action="append", default=[], metavar="KEY=VALUE",
                       help="a metric parameter (TOML value), e.g. patch_size=4; repeatable")
    group.add_argument("--sampler", choices=("grid", "random", "tpe"), default="random",
                       help="grid, random (default) or tpe (needs optuna: pip install 'zplug[tune]')")
    group.add_argument("--trials", type=int, default=100, metavar="N", help="parameter sets to try (default 100)")
    group.add_argument("--grid-points", type=int, default=5, metavar="N",
                       help="values per range in a grid search (default 5)")
    group.add_argument("--holdout", action="append", default=[], metavar="INPUT",
                       help="held-out images to compare the defaults and the tuned preset on; repeatable")
    group = parser.add_argument_group("output")
    group.add_argument("--out", default="results/tune", metavar="DIR",
                       help="output folder: NAME.toml (the tuned preset), NAME.summary.json and trials.jsonl "
                       "(default results/tune)")
    group.add_argument("--name", metavar="NAME", help="the tuned preset's name (file stem; default: BASE_tuned)")
    group.add_argument("--overwrite", action="store_true",
                       help="replace existing output files, and restart a trial log written for another run "
                       "(a log of the same run is always resumed)")
    parser.set_defaults(run=run)


def run(args) -> int:
    """Run ``zplug tune``; returns the exit status."""
    from zplug.cli._dataset import bounds_for, load_dataset, load_setup
    from zplug.cli._progress import ProgressBar
    from zplug.cli.explain import CommandError
    from zplug.cli.presets import parse_params
    from zplug.preset.loading import is_path, load_preset
    from zplug.tune.search import tune
    from zplug.tune.space import parse_space
    from zplug.tune.writer import check_writable

    start = time.perf_counter()
    if args.trials < 1:
        raise CommandError(f"--trials must be at least 1 (got {args.trials})")
    if args.grid_points < 1:
        raise CommandError(f"--grid-points must be at least 1 (got {args.grid_points})")
    out = Path(args.out)
    base = load_preset(args.preset)
    name = args.name or f"{base.name}_tuned"
    if not name.replace("_", "").replace("-", "").isalnum():
        raise CommandError(f"--name {name!r}: use letters, digits, '_' and '-' (it becomes the file name)")
    preset_file, summary_file = out / f"{name}.toml", out / f"{name}.summary.json"
    for path in (preset_file, summary_file):
        check_writable(path, args.overwrite)
    space = parse_space(args.space)
    setup = load_setup(args)
    fixed = parse_params(args.param)
    fixed.update(bounds_for(args.preset, setup, fixed))
    base_ref = reference(args.preset, out) if is_path(args.preset) else args.preset
    searched, groups = args.preset, None
    if args.layer_groups:
        groups, searched = write_groups(args, setup, fixed, base_ref, out)
        if not space:
            raise CommandError(f"--layer-groups: give --space for the groups' parameters ({', '.join(groups.params)})")
    data = load_dataset(args, setup)
    holdout = load_dataset(args, setup, args.holdout) if args.holdout else None
    from zplug.cli.evaluate import build_metrics

    metric_args = argparse.Namespace(metric=[args.metric], metric_param=args.metric_param)
    (metric,) = build_metrics(metric_args)
    bar = ProgressBar(args.trials + 1, "trials", enabled=args.progress)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.done)

    config = {
        "model": setup.label,
        "weights": args.weights,
        "inputs": [str(sample.path) for sample in data.samples],
        "target": args.target,
        "preprocessing": setup.convention.preprocess.describe(),
        "batch_size": args.batch_size,
        "layer_groups": {k: list(v) for k, v in groups.groups.items()} if groups is not None else None,
    }
    try:
        result = tune(
            setup.model, list(data.batches), None, searched, space, metric=metric, sampler=args.sampler,
            trials=args.trials, seed=args.seed, fixed=fixed, grid_points=args.grid_points, log=out / "trials.jsonl",
            config=config, restart=args.overwrite, batch_size=args.batch_size, progress=progress,
        )
    finally:
        bar.close()
    document, comments = tuned_document(result, base_ref, groups, data, args.preset)
    from zplug.tune.writer import preset_text, write_text

    write_text(preset_file, preset_text(document, comments), overwrite=args.overwrite)
    comparison = compare(args, setup, metric, fixed, preset_file, data, holdout)
    summary = {**result.to_dict(), "preset_file": str(preset_file), "comparison": comparison}
    write_text(summary_file, json.dumps(summary, indent=2) + "\n", overwrite=args.overwrite)
    print(report(result, comparison, data, holdout, args.preset + (" with layer groups" if groups else "")))
    print(f"wrote {preset_file}, {summary_file}, {out / 'trials.jsonl'}; time: {time.perf_counter() - start:.1f} s")
    return 0


def reference(preset: str, out: Path) -> str:
    """How a preset file in ``out`` names the file ``preset``: a relative path (POSIX separators)."""
    return Path(os.path.relpath(Path(preset).resolve(), out.resolve())).as_posix()


def write_groups(args, setup, fixed, base_ref: str, out: Path):
    """Write OUT/groups.toml (the base with one gamma per layer group); return the groups and the file."""
    from zplug.tune.groups import layer_group_preset
    from zplug.tune.writer import preset_text, write_text

    groups = layer_group_preset(setup.model, args.preset, extends=base_ref, **fixed)
    path = out / "groups.toml"
    comment = f"Layer groups of model {setup.label}, written by `zplug tune --layer-groups`."
    text = preset_text(groups.document, [comment])
    if not (path.exists() and path.read_text(encoding="utf-8") == text):
        write_text(path, text, overwrite=args.overwrite)
    return groups, str(path)


def tuned_document(result, base_ref: str, groups, data, base: str):
    """The tuned preset: the groups' document (if any) or a bare one, extending the base."""
    from zplug.tune.search import tuned_preset_document

    label = base if groups is None else f"{base} with layer groups"
    return tuned_preset_document(
        result, extends=base_ref, base=label, base_document=None if groups is None else groups.document,
        data=data.describe(),
    )


def compare(args, setup, metric, fixed, preset_file: Path, data, holdout) -> dict[str, Any]:
    """Score the defaults, the tuned preset (read back from its file), plain gradients and random relevance."""
    from zplug.tune.objective import Objective

    sets = {"tune": data} if holdout is None else {"tune": data, "holdout": holdout}
    out: dict[str, Any] = {}
    for label, dataset in sets.items():
        def objective(preset, params=None, *, dataset=dataset):
            return Objective(
                setup.model, list(dataset.batches), metric, preset=preset, fixed=params, seed=args.seed,
                batch_size=args.eval_batch_size,
            )
        rows = {
            f"{args.preset} (defaults)": objective(args.preset, fixed)(),
            f"{preset_file.stem} (tuned)": objective(str(preset_file), fixed)(),
            "gradient (no rules)": objective(None)(),
            "random": objective(None).random(),
        }
        out[label] = {key: {"mean": r.mean, "sem": r.sem, "n": len(r)} for key, r in rows.items()}
    return out


def report(result, comparison, data, holdout, base: str) -> str:
    """The lines printed at the end."""
    best = result.best
    arrow = "higher" if result.higher_is_better else "lower"
    lines = [
        f"tuned {base} for {result.metric!r} ({arrow} is better) on {data.describe()}",
        f"{len(result.trials)} trials ({result.sampler}, seed {result.seed}); defaults {result.default.score:.6g}; "
        + (f"best trial {best.number}: {best.score:.6g} with {format_params(best.params)}" if result.improved
           else "no trial beat the defaults"),
        "",
    ]
    sets = list(comparison)
    width = max(len(key) for key in comparison[sets[0]])
    lines.append(f"{'':{width}}  " + "  ".join(f"{s + ' set':>20}" for s in sets))
    for key in comparison[sets[0]]:
        cells = [f"{comparison[s][key]['mean']:>10.4f} ± {comparison[s][key]['sem']:.4f}" for s in sets]
        lines.append(f"{key:{width}}  " + "  ".join(f"{c:>20}" for c in cells))
    if holdout is not None:
        lines.append(f"holdout: {holdout.describe()}")
    return "\n".join(lines)


def format_params(params: dict[str, Any]) -> str:
    """``a=1.5, b=0.2`` with short numbers."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in params.items())


__all__ = ("EPILOG", "add_parser", "run")
