"""``zplug evaluate``: compare explanation methods with faithfulness metrics on images (see docs/evaluation.md)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import attrs

EPILOG = """\
examples:
  zplug evaluate --demo --preset epsilon_plus --preset epsilon_gamma_box --attributor gradient --out results/eval
  zplug evaluate photos/ --model resnet18 --weights r18.pth --preset epsilon_plus --metric region_perturbation \\
      --metric-param patch_size=16 --metric-param baseline=blur
  zplug evaluate --demo --preset results/tune/tuned.toml --metric srg --metric pixel_flipping --json -
"""


def add_parser(subparsers) -> None:
    """Register the ``evaluate`` sub-command."""
    from zplug.cli._dataset import add_data_arguments

    parser = subparsers.add_parser(
        "evaluate",
        help="measure how faithful explanation methods are (pixel flipping, region perturbation, SRG)",
        description="Explain images with several methods and measure each with faithfulness metrics: a table, "
        "and results.json, scores.csv and curve plots in the output folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_arguments(parser, inputs_help="image files, folders of images, or ImageFolder trees; with --demo and "
                       "no INPUT: the bundled sample images")
    group = parser.add_argument_group("methods (at least one; a random reference is added unless --no-random)")
    group.add_argument("--preset", action="append", default=[], metavar="NAME|FILE",
                       help="an LRP preset (gradient attributor); repeatable")
    group.add_argument("--attributor", action="append", default=[], metavar="NAME",
                       help="an attributor without a preset: gradient (plain gradient), smoothgrad, "
                       "integrated_gradients, occlusion, or a plugin's; repeatable")
    group.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="a preset or attributor parameter (TOML value), given to every method that has it")
    group.add_argument("--random", action=argparse.BooleanOptionalAction, default=True,
                       help="add uniformly random relevance as a reference (default: on)")
    group = parser.add_argument_group("metrics")
    group.add_argument("--metric", action="append", default=[], metavar="NAME",
                       help="a registered metric (default: srg); repeatable; zplug plugins --all lists them")
    group.add_argument("--metric-param", action="append", default=[], metavar="KEY=VALUE",
                       help="a metric parameter (TOML value), given to every metric that has it, e.g. "
                       "patch_size=4, baseline=\"blur\", order=\"lerf\"")
    group = parser.add_argument_group("output")
    group.add_argument("--out", metavar="DIR", help="write results.json, scores.csv and curves/*.png here")
    group.add_argument("--overwrite", action="store_true", help="replace existing output files")
    group.add_argument("--plots", action=argparse.BooleanOptionalAction, default=None,
                       help="draw the curves (needs matplotlib; default: when it is installed)")
    group.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE (- for stdout)")
    parser.set_defaults(run=run)


@attrs.frozen(kw_only=True)
class Method:
    """One way to get relevance: an LRP preset, an attributor, or random relevance."""

    label: str
    attributor: Any = None
    mapping: Any = None
    random: bool = False


def build_methods(args, setup, params: dict[str, Any]) -> list[Method]:
    """The methods of ``--preset``, ``--attributor`` and ``--random``, with ``--param`` routed by name."""
    from zplug.attributors.base import make_attributor
    from zplug.cli._dataset import bounds_for, route_params
    from zplug.cli.explain import CommandError
    from zplug.preset.loading import is_path, load_preset
    from zplug.registry import default_registry

    if not args.preset and not args.attributor:
        raise CommandError("no method: give --preset NAME|FILE and/or --attributor NAME (e.g. --attributor gradient)")
    preset_labels = [Path(p).stem if is_path(p) else p for p in args.preset]
    labels = [*preset_labels, *args.attributor, *(["random"] if args.random else [])]
    duplicate = next((label for label in labels if labels.count(label) > 1), None)
    if duplicate is not None:
        raise CommandError(f"method '{duplicate}' is given twice (a preset file is named by its stem)")
    catalog = default_registry().attributors
    accepted = {f"preset {p}": set(load_preset(p).params) for p in args.preset}
    for name in args.attributor:
        accepted[f"attributor {name}"] = {f.name for f in attrs.fields(catalog[name])}
    routed = route_params(params, accepted, "--param", "method")
    gradient = catalog["gradient"]
    methods = []
    from zplug.resolver import resolve

    for preset, label in zip(args.preset, preset_labels):
        given = routed[f"preset {preset}"]
        mapping = resolve(setup.model, preset, **given, **bounds_for(preset, setup, given))
        methods.append(Method(label=label, attributor=make_attributor(gradient, {}), mapping=mapping))
    for name in args.attributor:
        attributor = make_attributor(catalog[name], routed[f"attributor {name}"])
        methods.append(Method(label=name, attributor=attributor))
    if args.random:
        methods.append(Method(label="random", random=True))
    return methods


def build_metrics(args) -> list[Any]:
    """The metrics of ``--metric`` with ``--metric-param`` routed by name."""
    from zplug.cli._dataset import route_params
    from zplug.cli.explain import CommandError
    from zplug.cli.presets import parse_params
    from zplug.metrics.base import make_metric
    from zplug.registry import default_registry

    names = args.metric or ["srg"]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise CommandError(f"--metric {duplicate} is given twice; run twice to compare its parameters")
    catalog = default_registry().metrics
    classes = {name: catalog[name] for name in names}
    routed = route_params(
        parse_params(args.metric_param), {n: {f.name for f in attrs.fields(c)} for n, c in classes.items()},
        "--metric-param", "metric",
    )
    return [make_metric(classes[name], routed[name]) for name in names]


def planned_outputs(args, metrics) -> list[Path]:
    """Every file the run will write (checked before any work)."""
    from zplug.metrics.plot import have_matplotlib

    files = []
    if args.out:
        out = Path(args.out)
        files += [out / "results.json", out / "scores.csv"]
        if plots_wanted(args, have_matplotlib()):
            files += [out / "curves" / f"{metric.name}.png" for metric in metrics]
    if args.json and args.json != "-":
        files.append(Path(args.json))
    return files


def plots_wanted(args, available: bool) -> bool:
    """Whether to draw curves: ``--plots`` asks for them (an error without matplotlib), default when installed."""
    if args.plots and not available:
        from zplug.metrics.plot import PlotUnavailableError

        raise PlotUnavailableError("--plots needs matplotlib: pip install 'zplug[plot]' (or --no-plots)")
    return bool(args.out) and (available if args.plots is None else args.plots)


def run(args) -> int:
    """Run ``zplug evaluate``; returns the exit status."""
    from zplug.cli._dataset import load_dataset, load_setup
    from zplug.cli._progress import ProgressBar
    from zplug.cli.presets import parse_params
    from zplug.tune.writer import check_writable

    start = time.perf_counter()
    setup = load_setup(args)
    metrics = build_metrics(args)
    files = planned_outputs(args, metrics)
    for path in files:
        check_writable(path, args.overwrite)
    data = load_dataset(args, setup)
    methods = build_methods(args, setup, parse_params(args.param))
    bar = ProgressBar(len(data.batches) * len(methods) * len(metrics), "evaluations", enabled=args.progress)
    parts: dict[tuple[str, str], list] = {}
    try:
        for number, (x, target) in enumerate(data.batches):
            for method in methods:
                relevance = relevance_of(method, setup.model, x, target, args.seed + number)
                for metric in metrics:
                    result = measure(setup.model, x, target, relevance, metric, method.label, args, number)
                    parts.setdefault((method.label, metric.name), []).append(result)
                    bar.update(1)
    finally:
        bar.close()
    results = join(parts)
    say = report_stream(args)
    print(table(results, methods, metrics), file=say)
    print(f"{data.describe()}; model {setup.label}; target {args.target}; seed {args.seed}", file=say)
    write_outputs(args, results, methods, metrics, data, setup)
    print(f"time: {time.perf_counter() - start:.1f} s", file=say)
    return 0


def report_stream(args):
    """Where the table goes: standard output, or standard error when the JSON goes there (``--json -``)."""
    return sys.stderr if args.json == "-" else sys.stdout


def relevance_of(method: Method, model, x, target, seed: int):
    """The relevance of one batch (``"random"`` for the random reference)."""
    import torch

    from zplug.explanation import explain

    if method.random:
        return "random"
    torch.manual_seed(seed)
    return explain(model, x, target, attributor=method.attributor, mapping=method.mapping).relevance


def measure(model, x, target, relevance, metric, label: str, args, number: int):
    """One metric on one batch."""
    from zplug.evaluation import evaluate

    return evaluate(
        model, x, target, relevance, metric=metric, method=label, seed=args.seed + number,
        batch_size=args.eval_batch_size,
    )


def join(parts: dict[tuple[str, str], list]) -> dict[tuple[str, str], Any]:
    """Join the batches of each (method, metric)."""
    from zplug.metrics.records import MetricResult

    return {key: MetricResult.concat(batches) for key, batches in parts.items()}


def table(results: dict[tuple[str, str], Any], methods: list[Method], metrics: list[Any]) -> str:
    """Methods as rows, metrics as columns: ``mean ± standard error``; the best real method is starred."""
    headers = ["method"] + [f"{m.name} ({'higher' if m.higher_is_better else 'lower'} is better)" for m in metrics]
    rows = []
    best = {}
    for metric in metrics:
        scored = [(results[(m.label, metric.name)].mean, m.label) for m in methods if not m.random]
        if scored:
            best[metric.name] = (max if metric.higher_is_better else min)(scored)[1]
    for method in methods:
        row = [method.label]
        for metric in metrics:
            result = results[(method.label, metric.name)]
            mark = " *" if best.get(metric.name) == method.label else ""
            row.append(f"{result.mean:.4f} ± {result.sem:.4f}{mark}")
        rows.append(row)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def document(results, methods, metrics, data, setup, args) -> dict[str, Any]:
    """Everything the run measured, as JSON data."""
    return {
        "model": setup.label,
        "inputs": list(data.paths),
        "files": [str(sample.path) for sample in data.samples],
        "target": args.target,
        "seed": args.seed,
        "metrics": [{"name": m.name, "repr": repr(m)} for m in metrics],
        "results": [results[(m.label, metric.name)].to_dict() for m in methods for metric in metrics],
    }


def scores_csv(results, methods, metrics, data) -> str:
    """One row per method, metric and input."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["method", "metric", "index", "file", "target", "score"])
    for method in methods:
        for metric in metrics:
            result = results[(method.label, metric.name)]
            for index, (score, target) in enumerate(zip(result.scores.tolist(), result.targets.tolist())):
                writer.writerow([method.label, metric.name, index, str(data.samples[index].path), target, repr(score)])
    return stream.getvalue()


def write_outputs(args, results, methods, metrics, data, setup) -> None:
    """Write results.json, scores.csv, the curves and ``--json``."""
    from zplug.metrics.plot import have_matplotlib, plot_curves
    from zplug.tune.writer import write_text

    doc = document(results, methods, metrics, data, setup, args)
    text = json.dumps(doc, indent=2) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    elif args.json:
        write_text(Path(args.json), text, overwrite=args.overwrite)
    if not args.out:
        return
    out = Path(args.out)
    write_text(out / "results.json", text, overwrite=args.overwrite)
    write_text(out / "scores.csv", scores_csv(results, methods, metrics, data), overwrite=args.overwrite)
    written = [out / "results.json", out / "scores.csv"]
    if plots_wanted(args, have_matplotlib()):
        for metric in metrics:
            path = out / "curves" / f"{metric.name}.png"
            plot_curves([results[(m.label, metric.name)] for m in methods], path, title=repr(metric))
            written.append(path)
    elif args.plots is None:
        print("curves: not drawn (pip install 'zplug[plot]' for matplotlib)", file=report_stream(args))
    print(f"wrote {', '.join(str(p) for p in written)}", file=report_stream(args))


__all__ = ("EPILOG", "Method", "add_parser", "run")
