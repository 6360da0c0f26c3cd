"""``zplug explain``: heatmaps for image files, folders or ImageFolder trees (see docs/cli.md).

Under ``torchrun --nproc-per-node N -m zplug explain ...`` the batches are dealt round-robin to
the processes; each process writes the files of its own inputs and rank 0 prints the summary
and writes the contact sheet, so the files are the same as those of a single process.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import attrs

from zplug.cli._options import add_preprocessing_options
from zplug.cli._output import NAME_FIELDS  # noqa: F401 - the fields of --name-format, kept importable here
from zplug.errors import CommandError, ZplugError

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
    from zplug.discovery import LAYOUTS
    from zplug.image import RELEVANCE_NORMS
    from zplug.imagefile import DEFAULT_MAX_PIXELS

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
    group = parser.add_argument_group("inputs")
    group.add_argument("--layout", choices=LAYOUTS, default="auto",
                       help="how a folder is read: auto (default: sub-folders with images and no images beside them "
                       "make an ImageFolder tree, else a plain folder), imagefolder (sub-folders are classes), or "
                       "flat (every image below it, unlabelled)")
    group.add_argument("--skip-bad", action="store_true",
                       help="skip inputs that cannot be used (unreadable, too large, ...), listing each on stderr")
    group.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                       help=f"the most pixels of an image, before and after resizing, and of the contact sheet "
                       f"(default {DEFAULT_MAX_PIXELS:,}); files may have 16 bytes per pixel")
    group = parser.add_argument_group("model")
    group.add_argument("--model", metavar="NAME",
                       help="a registered model name (zplug plugins) or package.module:factory")
    group.add_argument("--demo", action="store_true", help="the bundled demo model (4 shape classes, 32x32 inputs)")
    group.add_argument("--weights", metavar="FILE", help="a state_dict file for the model (torch.load weights_only)")
    group.add_argument("--class-names", metavar="FILE", help="the model's class names, one per line, in output order")
    group.add_argument("--output-index", type=int, metavar="N",
                       help="for a model that returns a tuple or list: the output to explain")

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
    group.add_argument("--form", choices=("relevance", "gradient"), default="relevance",
                       help="what the backward pass carries between layers: relevance (default) or relevance "
                       "divided by the activation (gradient: faster, less memory; every rule needs a gradient form)")
    group.add_argument("--seed", type=int, default=0,
                       help="random seed; batch b uses seed+b (noise of smoothgrad), so sharding does not change it")

    add_preprocessing_options(parser)

    group = parser.add_argument_group("output")
    group.add_argument("--out", default="results", metavar="DIR",
                       help="output folder (default: results); it must be missing or empty, unless --overwrite")
    group.add_argument("--overwrite", action="store_true",
                       help="write into a folder that holds files: replace those with this run's names, keep the rest")
    group.add_argument("--name-format", default="{sample:02d}_{stem}", metavar="FORMAT",
                       help="file name (no extension) of an input's files, a path inside OUT/heatmaps etc.; fields: "
                       "{sample} (number), {stem} (file name without extension), {label}, {pred}; default: "
                       "{sample:02d}_{stem}")
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


class _StepFailedError(Exception):
    """A step failed on some process; the message was printed (on rank 0)."""


def run(args) -> int:
    """Run ``zplug explain``; returns the exit status.

    The run goes in steps (checks, reading the inputs, the model's first output, explaining,
    the summary); after each, the processes of a ``torchrun`` run compare notes, so that an
    error on any of them stops all of them there, and rank 0 reports it once, saying which
    files were written before it.
    """
    from zplug.distributed import context

    start = time.perf_counter()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CommandError("--device cuda: CUDA is not available here; use --device cpu")
    with context(args.device) as ctx:
        device = f"cuda:{ctx.local_rank}" if args.device == "cuda" and ctx.distributed else args.device
        folder: list = []  # the OutputFolder, once there is one (for the files written before an error)
        try:
            plan = _step(ctx, folder, lambda: prepare(args, device, ctx.is_main))
            folder.append(plan.folder)
            checked = _step(ctx, folder, lambda: check_shard(plan, ctx), share=True)
            plan = _step(ctx, folder, lambda: settle(plan, [item for part in checked for item in part], ctx))
            gathered = _step(ctx, folder, lambda: work(plan, ctx), share=True)
            seconds = time.perf_counter() - start
            _step(ctx, folder, lambda: finish(plan, gathered, seconds, ctx) if ctx.is_main else None)
        except _StepFailedError:
            return 2
        finally:
            if folder:
                folder[0].close()
    return 0


def _step(ctx, folder: list, action, share: bool = False) -> Any:
    """Run ``action`` on every process; raise :class:`_StepFailedError` if it failed on any.

    Returns this process's result, or with ``share`` every process's result (a list by rank).

    In a single process, errors that are no :class:`ZplugError` (bugs) propagate with their
    traceback, after a line on the files written before them.
    """
    value, failure = None, None
    try:
        value = action()
    except KeyboardInterrupt:
        if folder and folder[0].written:
            from zplug.cli._output import describe_written

            note = describe_written(folder[0].root, len(folder[0].written), folder[0].written_indices)
            print(f"zplug: {note.replace(' before it', ' before the interruption')}", file=sys.stderr, flush=True)
        raise
    except Exception as exc:  # noqa: BLE001 - every process must hear of it before any exits
        failure = exc
    written = (len(folder[0].written), folder[0].written_indices) if folder else (0, [])
    gathered = ctx.all_gather((value if share else None, _describe_failure(failure), written))
    failed = [part[1] for part in gathered if part[1] is not None]
    if not failed:
        return [part[0] for part in gathered] if share else value
    count = sum(part[2][0] for part in gathered)
    indices = sorted(i for part in gathered for i in part[2][1])
    note = ""
    if folder:
        from zplug.cli._output import describe_written

        note = describe_written(folder[0].root, count, indices)
    if failure is not None and not isinstance(failure, ZplugError):
        if note:
            print(f"zplug: {note}", file=sys.stderr, flush=True)
        if not ctx.distributed:
            raise failure
        traceback.print_exception(failure)
    if ctx.is_main:
        print(f"zplug: error: {failed[0]}{'; ' + note if note and count else ''}", file=sys.stderr, flush=True)
    ctx.barrier()
    raise _StepFailedError


def _describe_failure(failure: BaseException | None) -> str | None:
    if failure is None:
        return None
    if isinstance(failure, ZplugError):
        return str(failure)
    return f"{type(failure).__name__}: {failure}"


@attrs.frozen(kw_only=True)
class Plan:
    """Everything checked and built before the first input is explained.

    ``samples`` holds ``(index, Sample)`` pairs of the inputs to explain (inputs skipped with
    ``--skip-bad`` keep their numbers, so names do not depend on them).
    """

    args: Any
    samples: list
    discovery: Any
    skipped_bad: list = attrs.field(factory=list)
    label_source: str | None
    model: Any
    label: str
    convention: Any
    names: dict
    kinds: tuple
    limits: Any
    folder: Any
    bound: Any
    attributor_params: dict
    mapping: Any = None
    attributor: Any = None
    target: Any
    device: str
    out: Path


def check_options(args) -> None:
    """Check the options that need neither the model nor the inputs (one-line errors, before any work)."""
    from zplug.cli._models import check_model_options
    from zplug.cli._output import check_format
    from zplug.cmap import get_cmap

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.sheet_limit < 0:
        raise CommandError(f"--sheet-limit must be 0 or more (got {args.sheet_limit})")
    for option, value in (("--resize", args.resize), ("--crop", args.crop)):
        if value is not None and value < 0:
            raise CommandError(f"{option} must be 0 (off) or a positive number of pixels (got {value})")
    if args.max_pixels < 1:
        raise CommandError(f"--max-pixels must be at least 1 (got {args.max_pixels})")
    for option, value in (("--resize", args.resize), ("--crop", args.crop)):
        if value and value * value > args.max_pixels:
            raise CommandError(
                f"{option} {value} makes images of at least {value}x{value} pixels, over the limit of "
                f"{args.max_pixels:,} pixels; lower {option} or raise --max-pixels"
            )
    if not 0 <= args.seed < 2**63 - 2**32:
        raise CommandError(f"--seed must be between 0 and 2**63 - 2**32 (got {args.seed})")
    if not math.isfinite(args.level) or args.level <= 0:
        raise CommandError(f"--level must be a positive number (got {args.level})")
    if args.output_index is not None and args.output_index < 0:
        raise CommandError(f"--output-index must be 0 or more (got {args.output_index})")
    check_model_options(args.model, args.demo)
    get_cmap(args.cmap)
    check_format(args.name_format)


def prepare(args, device: str, main: bool = True) -> Plan:
    """Check the options, find the inputs, check the output folder, build the model, plan the file names.

    The same on every process (only rank 0 checks the folder). Everything that needs no model
    (options, parameters, input paths, the output folder) is checked before torch and the model
    are loaded; the names of every file the run will write are checked before any input is read.
    """
    from zplug.cli._models import Convention, build_model, with_options
    from zplug.cli._output import KINDS, SHEET, OutputFolder, check_paths, files_of, plan_names
    from zplug.cli.presets import parse_params
    from zplug.discovery import discover
    from zplug.imagefile import Limits
    from zplug.inputs import Preprocess
    from zplug.preset.binding import bind_preset

    check_options(args)
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
    discovery = discover(paths, args.layout)
    folder = OutputFolder(Path(args.out), args.overwrite)
    if main:
        folder.check()
    loaded = build_model(args.model, args.demo, args.weights)
    convention = with_options(loaded.convention, **options)
    samples = discovery.samples(convention.classes)
    kinds = tuple(kind for kind, wanted in zip(KINDS, (True, args.save_inputs, args.save_relevance)) if wanted)
    names = plan_names(args.name_format, samples, convention.classes)
    planned = [path for index in names for path in files_of(names[index], kinds)]
    if args.sheet_limit:
        planned.append(SHEET)
    check_paths(planned)
    if main:
        folder.check_targets(planned)
    target = parse_target(args.target, convention.classes, samples)
    return Plan(
        args=args, samples=list(enumerate(samples)), discovery=discovery,
        label_source=discovery.label_source(convention.classes), model=loaded.module.to(device),
        convention=convention, label=loaded.label, names=names, kinds=kinds, limits=Limits(args.max_pixels),
        folder=folder, target=target, device=device, out=Path(args.out), bound=bound,
        attributor_params=attributor_params,
    )


def check_shard(plan: Plan, ctx) -> list[tuple[int, str | None, tuple | None]]:
    """Decode this process's share of the inputs (every ``world_size``-th); return ``(index, problem, shape)``."""
    from zplug.inputs import InputError

    pre = plan.convention.preprocess
    results = []
    for position in ctx.mine(len(plan.samples)):
        index, sample = plan.samples[position]
        try:
            results.append((index, None, pre.check(sample.path, plan.limits)))
        except InputError as exc:
            results.append((index, str(exc), None))
    return results


def settle(plan: Plan, checked: list, ctx) -> Plan:
    """Drop or refuse unusable inputs, check batch sizes and the sheet, run the model once, build the method."""
    from zplug.inputs import InputError

    args = plan.args
    checked = sorted(checked)
    bad = [(index, problem) for index, problem, _ in checked if problem is not None]
    shapes = {index: shape for index, _, shape in checked if shape is not None}
    if bad and not args.skip_bad:
        good = len(plan.samples) - len(bad)
        others = f"; give --skip-bad to explain the other {good} input{'s' if good != 1 else ''}" if good else ""
        if len(bad) == 1:
            raise InputError(f"{bad[0][1]}{others}")
        if ctx.is_main:
            for _, problem in bad:
                print(f"zplug: {problem}", file=sys.stderr)
        raise InputError(f"{len(bad)} of {len(plan.samples)} inputs cannot be used (listed above){others}")
    if bad and ctx.is_main:
        for _, problem in bad:
            print(f"zplug: skipped: {problem}", file=sys.stderr)
    samples = [(index, sample) for index, sample in plan.samples if index in shapes]
    if not samples:
        raise InputError(f"none of the {len(plan.samples)} inputs can be used (listed above)")
    check_batches(samples, shapes, args.batch_size)
    check_sheet(samples, shapes, args.sheet_limit, plan.limits.max_pixels)
    plan = attrs.evolve(plan, samples=samples, skipped_bad=[index for index, _ in bad])
    outputs = check_output(plan)
    target = plan.target
    if isinstance(target, int) and target >= outputs:
        raise CommandError(f"--target {target}: model '{plan.label}' has {outputs} outputs (0 to {outputs - 1})")
    attributor, mapping = build_method(args, plan.model, plan.convention, plan.device, plan.bound,
                                       plan.attributor_params)
    return attrs.evolve(plan, attributor=attributor, mapping=mapping)


def check_batches(samples: list, shapes: dict, batch_size: int) -> None:
    """Raise :class:`InputError` if the images of one batch would differ in size."""
    from zplug.inputs import InputError

    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        first_index, first = batch[0]
        for index, sample in batch[1:]:
            if shapes[index] != shapes[first_index]:
                (_, h, w), (_, h0, w0) = shapes[index], shapes[first_index]
                raise InputError(
                    f"image '{sample.path}' is {w}x{h} but '{first.path}' is {w0}x{h0}; images in a batch need one "
                    "size: set --resize and --crop, or --batch-size 1"
                )


def check_sheet(samples: list, shapes: dict, sheet_limit: int, max_pixels: int) -> None:
    """Raise :class:`CommandError` if the contact sheet would be over ``max_pixels``."""
    count = min(sheet_limit, len(samples))
    if not count:
        return
    height = max(shapes[index][1] for index, _ in samples[:count])
    width = max(shapes[index][2] for index, _ in samples[:count])
    scale = max(1, 128 // max(height, width))
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    sheet_w, sheet_h = columns * (2 * width * scale + 8), rows * (height * scale + 4)
    if sheet_w * sheet_h > max_pixels:
        raise CommandError(
            f"--sheet-limit {sheet_limit}: the contact sheet of {count} inputs of {width}x{height} would be about "
            f"{sheet_w}x{sheet_h} pixels, over the limit of {max_pixels:,}; lower --sheet-limit (0: no sheet) or "
            "raise --max-pixels"
        )


def check_output(plan: Plan) -> int:
    """Run the model on the first input; check its output and the class names; return the number of outputs."""
    import torch

    from zplug.attributors.base import select_output
    from zplug.errors import ModelMismatchError

    args = plan.args
    index, sample = plan.samples[0]
    pre = plan.convention.preprocess
    x = pre.normalize(torch.from_numpy(pre.load(sample.path, plan.limits)[None])).to(plan.device)
    try:
        with torch.no_grad():
            output = plan.model(x)
    except Exception as exc:  # noqa: BLE001 - any failure of the model's forward pass on our input
        from zplug.cli._weights import first_sentence

        raise ModelMismatchError(
            f"model '{plan.label}' fails on input '{sample.path}' (shape {tuple(x.shape)} after preprocessing: "
            f"{pre.describe()}): {type(exc).__name__}: {first_sentence(str(exc))}; check --resize and --crop"
        ) from None
    if isinstance(output, (tuple, list)) and args.output_index is None:
        raise ModelMismatchError(
            f"model '{plan.label}' returns a {type(output).__name__} of {len(output)} outputs; choose the one to "
            f"explain with --output-index (0 to {len(output) - 1})"
        )
    try:
        output = select_output(output, args.output_index)
    except ModelMismatchError as exc:
        raise ModelMismatchError(str(exc).replace("output_index=", "--output-index ")) from None
    if output.ndim != 2 or output.shape[0] != 1:
        raise ModelMismatchError(
            f"zplug explain needs a classifier with outputs of shape (batch, classes); model '{plan.label}' returned "
            f"shape {tuple(output.shape)} for one input"
        )
    outputs = int(output.shape[1])
    classes = plan.convention.classes
    if classes is not None and len(classes) != outputs:
        source = f"--class-names '{args.class_names}'" if args.class_names else f"the class names of {plan.label}"
        raise CommandError(
            f"{source} has {len(classes)} names but model '{plan.label}' has {outputs} outputs; give one name per "
            "output, in output order"
        )
    return outputs


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


def work(plan: Plan, ctx) -> tuple[list[Record], list, list, int, list[str]]:
    """Explain this process's batches and write their files.

    Returns records, sheet cells, ledgers, and how many files replaced older ones and which
    were written (so that rank 0 can account for every process's files).
    """
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
                ledgers.append((number, batches[number][0][0], batches[number][-1][0], ledger))
            bar.update(len(batches[number]))
    finally:
        bar.close()
    return records, sheet, ledgers, plan.folder.replaced, list(plan.folder.written)


def explain_batch(plan: Plan, number: int, first: int, batch: list):
    """Explain one batch; write its heatmaps (and inputs, relevance); return records, sheet cells, ledger.

    ``first`` is the batch's position in the inputs to explain (the contact sheet shows the first
    ``--sheet-limit`` of them); each input's files take the name planned for its index.
    """
    import numpy as np
    import torch

    from zplug.cli._models import class_name
    from zplug.cli._output import files_of, format_name, uses_pred
    from zplug.explanation import explain
    from zplug.image import heatmaps
    from zplug.inputs import load_batch

    args = plan.args
    pre = plan.convention.preprocess
    classes = plan.convention.classes
    samples = [sample for _, sample in batch]
    images = load_batch(samples, pre, plan.limits)
    x = pre.normalize(torch.from_numpy(images)).to(plan.device)
    target = plan.target
    if target == "pred":
        target = None
    elif target == "label":
        target = [sample.label for sample in samples]
    torch.manual_seed(args.seed + number)
    try:
        result = explain(plan.model, x, target, attributor=plan.attributor, mapping=plan.mapping, ledger=args.ledger,
                         output_index=args.output_index, form=args.form)
    except (torch.OutOfMemoryError, MemoryError):
        raise CommandError(
            f"out of memory while explaining inputs {batch[0][0]}-{batch[-1][0]}; lower --batch-size or the image "
            "size (--resize, --crop)"
        ) from None
    preds = result.output.argmax(1).tolist()
    relevance = result.relevance.detach().float().cpu().numpy()
    maps = heatmaps(relevance, args.relevance_norm, args.cmap, args.level)
    pixels = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    records, cells = [], []
    for offset, (index, sample) in enumerate(batch):
        pred_name = class_name(classes, preds[offset])
        name = plan.names[index]
        if uses_pred(args.name_format):  # checked for every class name before the run
            name = format_name(args.name_format, index, sample, pred_name)
        for kind, path in zip(plan.kinds, files_of(name, plan.kinds)):
            plan.folder.write(path, _saver(kind, maps[offset], pixels[offset], relevance[offset]))
        plan.folder.written_indices.append(index)
        records.append(Record(
            index=index, name=name, path=str(sample.path), label=sample.label, label_name=sample.label_name,
            pred=preds[offset], pred_name=pred_name, total=float(relevance[offset].sum()),
        ))
        if first + offset < args.sheet_limit:
            cells.append((index, pixels[offset], maps[offset], caption(sample, pred_name, classes)))
    ledger = None if result.ledger is None else str(result.ledger)
    return records, cells, ledger


def _saver(kind: str, heatmap, pixels, relevance):
    """Return ``save(binary_file)`` for one input's file of ``kind``."""
    import numpy as np

    if kind == "heatmaps":
        return lambda file: heatmap.save(file, format="PNG")
    if kind == "inputs":
        from PIL import Image

        return lambda file: Image.fromarray(pixels).save(file, format="PNG")
    return lambda file: np.save(file, relevance)


def caption(sample: Any, pred_name: str, classes) -> str:
    """Return the contact-sheet caption: ``label / pred. name`` (``pred. name`` without a label)."""
    if sample.label is None:
        return f"pred. {pred_name}"
    from zplug.cli._models import class_name

    label = sample.label_name if classes is None else class_name(classes, sample.label)
    return f"{label} / pred. {pred_name}"


def finish(plan: Plan, gathered: list, seconds: float, ctx) -> None:
    """On rank 0: check the names, write the contact sheet and print the summary (and ledgers)."""
    from zplug.cli._output import SHEET

    args = plan.args
    records = sorted((r for part in gathered for r in part[0]), key=lambda r: r.index)
    cells = sorted((c for part in gathered for c in part[1]), key=lambda c: c[0])
    ledgers = sorted((entry for part in gathered for entry in part[2]), key=lambda e: e[0])
    if [r.index for r in records] != [index for index, _ in plan.samples]:
        raise ZplugError(f"internal error: {len(records)} of {len(plan.samples)} inputs were explained")
    names: dict[str, Record] = {}
    for record in records:  # with {pred}, processes cannot see each other's names before they write
        if record.name in names:
            raise CommandError(
                f"--name-format {args.name_format!r} gave '{names[record.name].path}' and '{record.path}' the same "
                f"name '{record.name}' (the second replaced the first's files); add {{sample}} to it"
            )
        names[record.name] = record
    for _, first, last, text in ledgers:
        print(f"conservation ledger, inputs {first}-{last}:\n{text}\n")
    if args.verbose:
        width = max(len(r.path) for r in records)
        widths = max(len(r.label_name or "-") for r in records), max(len(r.pred_name) for r in records)
        for r in records:
            print(
                f"{r.index:4d}  {r.path:<{width}}  label {r.label_name or '-':<{widths[0]}}  "
                f"pred {r.pred_name:<{widths[1]}}  relevance sum {r.total:.4g}"
            )
    sheet_path = None
    if cells:
        sheet = contact_sheet_of(cells)
        plan.folder.write(SHEET, lambda file: sheet.save(file, format="PNG"))
        sheet_path = plan.out / SHEET
    replaced = plan.folder.replaced + sum(part[3] for part in gathered[1:])  # rank 0's count includes the sheet
    written = {path for part in gathered for path in part[4]} | set(plan.folder.written)
    overwritten = (replaced, len(plan.folder.before - written)) if plan.folder.before else None
    print(summary(plan, records, sheet_path, len(cells), seconds, ctx.world_size, overwritten))


def contact_sheet_of(cells: list):
    """Lay out the inputs and heatmaps of ``cells`` ``(index, pixels, heatmap, caption)`` on one sheet.

    Inputs of different sizes (``--batch-size 1`` without a crop) are padded with white to the largest.
    """
    import numpy as np

    from zplug.image import contact_sheet

    height = max(c[1].shape[0] for c in cells)
    width = max(c[1].shape[1] for c in cells)
    pixels = np.full((len(cells), height, width, 3), 255, dtype=np.uint8)
    for slot, cell in enumerate(cells):
        pixels[slot, : cell[1].shape[0], : cell[1].shape[1]] = cell[1]
    scale = max(1, 128 // max(height, width))
    return contact_sheet(pixels, [c[2] for c in cells], [c[3] for c in cells], scale=scale)


def summary(plan: Plan, records: list[Record], sheet_path, shown: int, seconds: float, world_size: int,
            overwritten: tuple[int, int] | None = None) -> str:
    """Return the lines printed at the end of a run (``overwritten``: files replaced, and older files left)."""
    args = plan.args
    method = f"preset {args.preset}" if args.preset else "no preset"
    if not args.preset and plan.attributor.uses_gradient:
        method += " (plain gradients)"
    if args.preset and not plan.attributor.uses_gradient:
        method += f" (unused: {plan.attributor.name} uses no gradients)"
    lines = [
        f"explained {len(records)} input{'s' if len(records) != 1 else ''}, target {args.target}",
        f"model: {plan.label} ({plan.convention.source}), eval mode",
        f"method: {method}, attributor {repr(plan.attributor)}",
        f"preprocessing: {plan.convention.preprocess.describe()}",
    ]
    skipped = plan.discovery.skipped.describe()
    if plan.skipped_bad:
        bad = f"{len(plan.skipped_bad)} unusable input{'s' if len(plan.skipped_bad) != 1 else ''} (--skip-bad; " \
              "listed on stderr)"
        skipped = f"{bad}, {skipped}" if skipped else bad
    if skipped:
        lines.append(f"skipped: {skipped}")
    labelled = [r for r in records if r.label is not None]
    if labelled:
        right = sum(r.pred == r.label for r in labelled)
        lines.append(
            f"accuracy: {right}/{len(labelled)} = {100 * right / len(labelled):.1f}% "
            f"(labels: ImageFolder sub-folders, indexed by {plan.label_source})"
        )
    lines.append(f"heatmaps: {plan.out / 'heatmaps'}/ ({len(records)} file{'s' if len(records) != 1 else ''})")
    if args.save_inputs:
        lines.append(f"inputs: {plan.out / 'inputs'}/")
    if args.save_relevance:
        lines.append(f"relevance: {plan.out / 'relevance'}/ (.npy, float32, shape of the input)")
    if sheet_path is not None:
        more = f", the first {shown} of {len(records)} inputs" if shown < len(records) else ""
        lines.append(f"contact sheet: {sheet_path}{more}")
    if overwritten is not None:
        replaced, left = overwritten
        lines.append(
            f"--overwrite: {replaced} file{'s' if replaced != 1 else ''} replaced; {left} "
            f"other file{'s' if left != 1 else ''} in {plan.out}/ from before left as "
            f"{'they were' if left != 1 else 'it was'}"
        )
    processes = f" on {world_size} processes" if world_size > 1 else ""
    lines.append(f"time: {seconds:.1f} s{processes}")
    return "\n".join(lines)


__all__ = ("EPILOG", "CommandError", "add_parser", "run")

if __name__ == "__main__":  # pragma: no cover
    from zplug.cli import main

    sys.exit(main(["explain", *sys.argv[1:]]))
