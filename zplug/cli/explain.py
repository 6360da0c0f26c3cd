"""``zplug explain``: heatmaps for image files, folders or ImageFolder trees (see docs/cli.md).

Under ``torchrun --nproc-per-node N -m zplug explain ...`` the batches are dealt round-robin to
the processes; each process writes the files of its own inputs and rank 0 prints the summary
and writes the contact sheet, so the files are the same as those of a single process.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import attrs

from zplug.errors import CommandError, ZplugError

#: The fields of ``--name-format``.
NAME_FIELDS = ("sample", "stem", "label", "pred")

EPILOG = """\
examples:
  zplug explain --demo --preset epsilon_plus_flat --out results/demo
  zplug explain photos/ --model vgg16 --weights vgg16.pth --preset epsilon_gamma_box --out results/vgg
  zplug explain imagenet-val/ --model resnet50 --weights resnet50.pth --preset epsilon_plus --target label
  zplug explain cat.png --model mypkg.models:build --attributor smoothgrad --param n_iter=32
  torchrun --nproc-per-node 4 -m zplug explain data/ --model resnet18 --weights r18.pth --preset epsilon_plus
"""


def add_parser(subparsers) -> None:
    """Register the ``explain`` sub-command."""
    from zplug.image import RELEVANCE_NORMS

    parser = subparsers.add_parser(
        "explain",
        help="write heatmaps for images (files, folders, ImageFolder trees)",
        description="Explain a model's decisions for images and write a heatmap per image, a contact sheet "
        "and a summary.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="*", metavar="INPUT",
        help="image files, folders of images, or ImageFolder trees (one sub-folder per class: labelled); "
        "with --demo and no INPUT: the bundled sample images",
    )
    group = parser.add_argument_group("model")
    group.add_argument("--model", metavar="NAME",
                       help="a registered model name (zplug plugins) or package.module:factory")
    group.add_argument("--demo", action="store_true", help="the bundled demo model (4 shape classes, 32x32 inputs)")
    group.add_argument("--weights", metavar="FILE", help="a state_dict file for the model (torch.load weights_only)")
    group.add_argument("--class-names", metavar="FILE", help="the model's class names, one per line, in output order")

    group = parser.add_argument_group("method")
    group.add_argument("--preset", metavar="NAME|FILE", help="an LRP preset (zplug presets) or a TOML file; "
                       "without one, the attributor uses plain gradients")
    group.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="a preset or attributor parameter, routed by name as zplug.explain does; the value is "
                       "a TOML literal (gamma=0.5, window=[8,8]); repeatable")
    group.add_argument("--attributor", default="gradient", metavar="NAME",
                       help="gradient (default), smoothgrad, integrated_gradients, occlusion, or a plugin's")
    group.add_argument("--attributor-param", action="append", default=[], metavar="KEY=VALUE",
                       help="a parameter that goes to the attributor only (for names the preset also has)")
    group.add_argument("--target", default="pred", metavar="label|pred|INDEX",
                       help="what is explained: the predicted class (pred, default), the folder label (label), "
                       "or a class index or name for all inputs")
    group.add_argument("--strict", action="store_true",
                       help="fail if a module with parameters gets no rule or an operation is not covered")
    group.add_argument("--ledger", action="store_true", help="print the conservation ledger of each batch")
    group.add_argument("--seed", type=int, default=0,
                       help="random seed; batch b uses seed+b (noise of smoothgrad), so sharding does not change it")

    group = parser.add_argument_group("preprocessing (defaults from the model's input convention)")
    group.add_argument("--resize", type=int, metavar="N", help="resize the shorter side to N pixels (0: don't)")
    group.add_argument("--crop", type=int, metavar="N", help="centre-crop N x N pixels (0: don't)")
    group.add_argument("--normalize", choices=("auto", "imagenet", "none"), default="auto",
                       help="input normalisation: the model's (auto), ImageNet mean/std, or none")
    group.add_argument("--mean", metavar="R,G,B", help="normalise with this mean (with --std)")
    group.add_argument("--std", metavar="R,G,B", help="normalise with this standard deviation (with --mean)")

    group = parser.add_argument_group("output")
    group.add_argument("--out", default="results", metavar="DIR", help="output folder (default: results)")
    group.add_argument("--name-format", default="{sample:02d}_{stem}", metavar="FORMAT",
                       help="file name (no extension) of an input's files; fields: {sample} (number), {stem} "
                       "(file name without extension), {label}, {pred}; default: {sample:02d}_{stem}")
    group.add_argument("--save-inputs", action="store_true", help="also write the (resized, cropped) inputs")
    group.add_argument("--save-relevance", action="store_true", help="also write the raw relevance (.npy)")
    group.add_argument("--sheet-limit", type=int, default=64, metavar="N",
                       help="the contact sheet shows the first N inputs (default 64; 0: no sheet)")
    group.add_argument("--cmap", default="coldnhot", help="colour map: a name or colour-map source (default coldnhot)")
    group.add_argument("--level", type=float, default=1.0, help="colour-map level (default 1.0)")
    group.add_argument("--relevance-norm", choices=RELEVANCE_NORMS, default="symmetric",
                       help="how relevance maps to colours (default symmetric)")

    group = parser.add_argument_group("running")
    group.add_argument("--batch-size", type=int, default=16, metavar="N", help="inputs per batch (default 16)")
    group.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="show a progress bar on stderr (default: on a terminal, for runs over a second)")
    group.add_argument("-v", "--verbose", action="store_true", help="print a line per input")
    parser.set_defaults(run=run)


@attrs.frozen(kw_only=True)
class Record:
    """What the summary needs of one explained input."""

    index: int
    name: str
    path: str
    label: int | None
    label_name: str | None
    pred: int
    pred_name: str
    total: float


def run(args) -> int:
    """Run ``zplug explain``; returns the exit status."""
    from zplug.distributed import context

    start = time.perf_counter()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CommandError("--device cuda: CUDA is not available here; use --device cpu")
    with context(args.device) as ctx:
        device = f"cuda:{ctx.local_rank}" if args.device == "cuda" and ctx.distributed else args.device
        plan, results, failure = None, ([], [], []), None
        try:
            plan = prepare(args, device)
            results = work(plan, ctx)
        except Exception as exc:  # noqa: BLE001 - every process must hear of it before any exits
            if not ctx.distributed:
                raise
            failure = exc
        gathered = ctx.all_gather((*results, _describe_failure(failure)))
        failed = [part[3] for part in gathered if part[3] is not None]
        if failed:
            # torchrun stops every process once one exits with an error: report first, then leave together
            if failure is not None and not isinstance(failure, ZplugError):
                traceback.print_exception(failure)
            if ctx.is_main:
                print(f"zplug: error: {failed[0]}", file=sys.stderr, flush=True)
            ctx.barrier()
            return 2
        if ctx.is_main:
            finish(plan, gathered, time.perf_counter() - start, ctx.world_size)
        ctx.barrier()
    return 0


def _describe_failure(failure: BaseException | None) -> str | None:
    if failure is None:
        return None
    if isinstance(failure, ZplugError):
        return str(failure)
    return f"{type(failure).__name__}: {failure}"


@attrs.frozen(kw_only=True)
class Plan:
    """Everything checked and built before the first image is read."""

    args: Any
    samples: list
    label_source: str | None
    model: Any
    label: str
    convention: Any
    mapping: Any
    attributor: Any
    target: Any
    device: str
    out: Path


def prepare(args, device: str) -> Plan:
    """Check the options and build the model, mapping and attributor (the same on every process).

    Everything that can be checked without the model (options, parameters, input paths) is
    checked first, so that a mistake is reported at once, before torch and the model are loaded.
    """
    from zplug.cli._models import Convention, build_model, check_model_options, with_options
    from zplug.cli.presets import parse_params
    from zplug.cmap import get_cmap
    from zplug.inputs import Preprocess, collect_inputs, label_source
    from zplug.preset.binding import bind_preset

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.sheet_limit < 0:
        raise CommandError(f"--sheet-limit must be 0 or more (got {args.sheet_limit})")
    for option, value in (("--resize", args.resize), ("--crop", args.crop)):
        if value is not None and value < 0:
            raise CommandError(f"{option} must be 0 (off) or a number of pixels (got {value})")
    check_model_options(args.model, args.demo)
    get_cmap(args.cmap)
    check_name_format(args.name_format)
    attributor_params = parse_params(args.attributor_param)
    bound = bind_preset(args.preset, parse_params(args.param), attributor=args.attributor)
    options = {"resize": args.resize, "crop": args.crop, "normalize": args.normalize, "mean": args.mean,
               "std": args.std, "class_names": args.class_names}
    with_options(Convention(preprocess=Preprocess()), **options)  # checks them before the model is built
    paths = list(args.inputs)
    if not paths:
        if not args.demo:
            raise CommandError("no inputs: give image files, folders or ImageFolder trees (or --demo for its samples)")
        from zplug.demo.samples import samples_dir

        paths = [str(samples_dir())]
    samples = collect_inputs(paths)
    loaded = build_model(args.model, args.demo, args.weights)
    convention = with_options(loaded.convention, **options)
    if convention.classes is not None and any(sample.label is not None for sample in samples):
        samples = collect_inputs(paths, convention.classes)  # ImageFolder labels follow the class names
    check_unique_names(args.name_format, samples)
    target = parse_target(args.target, convention.classes, samples)
    model = loaded.module.to(device)
    attributor, mapping = build_method(args, model, convention, device, bound, attributor_params)
    return Plan(
        args=args, samples=samples, label_source=label_source(paths, convention.classes), model=model,
        convention=convention, label=loaded.label, mapping=mapping,
        attributor=attributor, target=target, device=device, out=Path(args.out),
    )


def check_name_format(fmt: str) -> None:
    """Check that ``fmt`` formats with the fields of :data:`NAME_FIELDS` only."""
    try:
        fmt.format(sample=0, stem="stem", label="label", pred="pred")
    except KeyError as exc:
        raise CommandError(
            f"--name-format {fmt!r}: unknown field {{{exc.args[0]}}} (fields: {', '.join(NAME_FIELDS)})"
        ) from None
    except (IndexError, ValueError) as exc:
        raise CommandError(f"--name-format {fmt!r}: {exc} (fields: {', '.join(NAME_FIELDS)})") from None


def format_name(fmt: str, index: int, sample: Any, pred_name: str = "") -> str:
    """Return the file name (without extension) of input number ``index``."""
    return fmt.format(sample=index, stem=sample.path.stem, label=sample.label_name or "", pred=pred_name)


def check_unique_names(fmt: str, samples: list) -> None:
    """Reject a name format that gives two inputs the same files (when it does not use ``{pred}``)."""
    if "{pred" in fmt:
        return
    seen: dict[str, Any] = {}
    for index, sample in enumerate(samples):
        name = format_name(fmt, index, sample)
        if name in seen:
            raise CommandError(
                f"--name-format {fmt!r} gives '{seen[name].path}' and '{sample.path}' the same name '{name}'; "
                "add {sample} to it"
            )
        seen[name] = sample


def parse_target(text: str, classes, samples: list) -> Any:
    """Return ``"pred"``, ``"label"`` or a class index for ``--target``."""
    if text in ("pred", "label"):
        if text == "label":
            unlabelled = [s for s in samples if s.label is None]
            if unlabelled:
                raise CommandError(
                    f"--target label needs labelled inputs (ImageFolder trees); '{unlabelled[0].path}' has no label"
                )
        return text
    if classes is not None and text in classes:
        return list(classes).index(text)
    try:
        index = int(text)
    except ValueError:
        names = f", or a class name ({', '.join(classes)})" if classes else ""
        raise CommandError(f"--target {text!r}: use label, pred, a class index{names}") from None
    if index < 0 or (classes is not None and index >= len(classes)):
        known = f"0 to {len(classes) - 1}" if classes else "0 or more"
        raise CommandError(f"--target {index}: a class index is {known}")
    return index


def build_method(args, model, convention, device: str, bound, attributor_params: dict):
    """Return ``(attributor, mapping)``: ``--param`` routed as :func:`zplug.explain` does, bounds filled in.

    ``bound`` is the preset with the ``--param`` values routed (:func:`zplug.preset.bind_preset`).
    """
    from zplug.attributors.base import make_attributor
    from zplug.registry import default_registry

    cls = default_registry().attributors[args.attributor]
    routed, preset_params = bound.attributor_params, dict(bound.preset_params)
    both = sorted(set(routed) & set(attributor_params))
    if both:
        raise CommandError(f"--param and --attributor-param both set '{both[0]}'; give it once")
    attributor = make_attributor(cls, {**routed, **attributor_params})
    if args.ledger and attributor.name != "gradient":
        raise CommandError(
            f"--ledger accounts for one backward pass: use --attributor gradient (got '{attributor.name}')"
        )
    if bound.preset is None:
        return attributor, None
    from zplug.resolver import resolve

    preset = bound.preset
    low, high = convention.preprocess.bounds()
    for key, value in (("low", low), ("high", high)):
        if key in preset.params and key not in preset_params:
            preset_params[key] = value.to(device) if hasattr(value, "to") else value
    mapping = resolve(model, preset, strict=args.strict, **preset_params)
    return attributor, mapping


def work(plan: Plan, ctx) -> tuple[list[Record], list, list]:
    """Explain this process's batches and write their files; return records, sheet cells and ledgers."""
    from zplug.cli._progress import ProgressBar

    args = plan.args
    size = args.batch_size
    batches = [plan.samples[i : i + size] for i in range(0, len(plan.samples), size)]
    mine = ctx.mine(len(batches))
    bar = ProgressBar(
        sum(len(batches[b]) for b in mine), "inputs" if ctx.world_size == 1 else f"inputs on rank {ctx.rank}",
        enabled=False if not ctx.is_main else args.progress,
    )
    records: list[Record] = []
    sheet: list = []
    ledgers: list = []
    try:
        for number in mine:
            first = number * size
            new_records, new_sheet, ledger = explain_batch(plan, number, first, batches[number])
            records += new_records
            sheet += new_sheet
            if ledger is not None:
                ledgers.append((number, first, first + len(batches[number]) - 1, ledger))
            bar.update(len(batches[number]))
    finally:
        bar.close()
    return records, sheet, ledgers


def explain_batch(plan: Plan, number: int, first: int, samples: list):
    """Explain one batch; write its heatmaps (and inputs, relevance); return records, sheet cells, ledger."""
    import numpy as np
    import torch

    from zplug.cli._models import class_name
    from zplug.errors import ModelMismatchError
    from zplug.explanation import explain
    from zplug.image import heatmaps
    from zplug.inputs import load_batch

    args = plan.args
    pre = plan.convention.preprocess
    classes = plan.convention.classes
    images = load_batch(samples, pre)
    x = pre.normalize(torch.from_numpy(images)).to(plan.device)
    target = plan.target
    if target == "pred":
        target = None
    elif target == "label":
        target = [sample.label for sample in samples]
    torch.manual_seed(args.seed + number)
    result = explain(plan.model, x, target, attributor=plan.attributor, mapping=plan.mapping, ledger=args.ledger)
    if result.output.ndim != 2:
        raise ModelMismatchError(
            f"zplug explain needs a classifier with outputs of shape (batch, classes); "
            f"model '{plan.label}' returned shape {tuple(result.output.shape)}"
        )
    preds = result.output.argmax(1).tolist()
    relevance = result.relevance.detach().float().cpu().numpy()
    maps = heatmaps(relevance, args.relevance_norm, args.cmap, args.level)
    pixels = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    records, cells = [], []
    for offset, sample in enumerate(samples):
        index = first + offset
        pred_name = class_name(classes, preds[offset])
        name = format_name(args.name_format, index, sample, pred_name)
        write(plan.out / "heatmaps" / f"{name}.png", maps[offset].save)
        if args.save_inputs:
            from PIL import Image

            write(plan.out / "inputs" / f"{name}.png", Image.fromarray(pixels[offset]).save)
        if args.save_relevance:
            write(plan.out / "relevance" / f"{name}.npy", lambda path, r=relevance[offset]: np.save(path, r))
        records.append(Record(
            index=index, name=name, path=str(sample.path), label=sample.label, label_name=sample.label_name,
            pred=preds[offset], pred_name=pred_name, total=float(relevance[offset].sum()),
        ))
        if index < args.sheet_limit:
            cells.append((index, pixels[offset], maps[offset], caption(sample, pred_name, classes)))
    ledger = None if result.ledger is None else str(result.ledger)
    return records, cells, ledger


def caption(sample: Any, pred_name: str, classes) -> str:
    """Return the contact-sheet caption: ``label / pred. name`` (``pred. name`` without a label)."""
    if sample.label is None:
        return f"pred. {pred_name}"
    from zplug.cli._models import class_name

    label = sample.label_name if classes is None else class_name(classes, sample.label)
    return f"{label} / pred. {pred_name}"


def write(path: Path, save) -> None:
    """Create the parent folders of ``path`` and call ``save(path)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save(path)


def finish(plan: Plan, gathered: list, seconds: float, world_size: int) -> None:
    """On rank 0: write the contact sheet and print the summary (and ledgers)."""
    args = plan.args
    records = sorted((r for part in gathered for r in part[0]), key=lambda r: r.index)
    cells = sorted((c for part in gathered for c in part[1]), key=lambda c: c[0])
    ledgers = sorted((entry for part in gathered for entry in part[2]), key=lambda e: e[0])
    if len(records) != len(plan.samples) or [r.index for r in records] != list(range(len(plan.samples))):
        raise ZplugError(f"internal error: {len(records)} of {len(plan.samples)} inputs were explained")
    for _, first, last, text in ledgers:
        print(f"conservation ledger, inputs {first}-{last}:\n{text}\n")
    if args.verbose:
        width = max(len(r.path) for r in records)
        names = max(len(r.label_name or "-") for r in records), max(len(r.pred_name) for r in records)
        for r in records:
            print(
                f"{r.index:4d}  {r.path:<{width}}  label {r.label_name or '-':<{names[0]}}  "
                f"pred {r.pred_name:<{names[1]}}  relevance sum {r.total:.4g}"
            )
    sheet_path = None
    if cells:
        sheet_path = plan.out / "contact_sheet.png"
        write(sheet_path, contact_sheet_of(cells).save)
    print(summary(plan, records, sheet_path, len(cells), seconds, world_size))


def contact_sheet_of(cells: list):
    """Lay out the inputs and heatmaps of ``cells`` ``(index, pixels, heatmap, caption)`` on one sheet."""
    import numpy as np

    from zplug.image import contact_sheet

    pixels = np.stack([c[1] for c in cells])
    scale = max(1, 128 // max(pixels.shape[1], pixels.shape[2]))
    return contact_sheet(pixels, [c[2] for c in cells], [c[3] for c in cells], scale=scale)


def summary(plan: Plan, records: list[Record], sheet_path, shown: int, seconds: float, world_size: int) -> str:
    """Return the lines printed at the end of a run."""
    args = plan.args
    method = f"preset {args.preset}" if args.preset else "no preset"
    if not args.preset and plan.attributor.uses_gradient:
        method += " (plain gradients)"
    if args.preset and not plan.attributor.uses_gradient:
        method += f" (unused: {plan.attributor.name} uses no gradients)"
    lines = [
        f"explained {len(records)} input{'s' if len(records) != 1 else ''}, target {args.target}",
        f"model: {plan.label} ({plan.convention.source})",
        f"method: {method}, attributor {repr(plan.attributor)}",
        f"preprocessing: {plan.convention.preprocess.describe()}",
    ]
    labelled = [r for r in records if r.label is not None]
    if labelled:
        right = sum(r.pred == r.label for r in labelled)
        lines.append(
            f"accuracy: {right}/{len(labelled)} = {100 * right / len(labelled):.1f}% "
            f"(labels: ImageFolder sub-folders, indexed by {plan.label_source})"
        )
    lines.append(f"heatmaps: {plan.out / 'heatmaps'}{'/'} ({len(records)} files)")
    if args.save_inputs:
        lines.append(f"inputs: {plan.out / 'inputs'}/")
    if args.save_relevance:
        lines.append(f"relevance: {plan.out / 'relevance'}/ (.npy, float32, shape of the input)")
    if sheet_path is not None:
        more = f", the first {shown} of {len(records)} inputs" if shown < len(records) else ""
        lines.append(f"contact sheet: {sheet_path}{more}")
    processes = f" on {world_size} processes" if world_size > 1 else ""
    lines.append(f"time: {seconds:.1f} s{processes}")
    return "\n".join(lines)


__all__ = ("EPILOG", "NAME_FIELDS", "CommandError", "add_parser", "run")

if __name__ == "__main__":  # pragma: no cover
    from zplug.cli import main

    sys.exit(main(["explain", *sys.argv[1:]]))
