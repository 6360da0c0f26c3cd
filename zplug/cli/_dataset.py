"""The inputs of ``zplug evaluate`` and ``zplug tune``: the model, image and target options of ``zplug explain``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import attrs

from zplug.cli._options import add_preprocessing_options
from zplug.errors import SpecError


def add_data_arguments(parser: argparse.ArgumentParser, *, inputs_help: str) -> None:
    """Add the inputs, model, target, preprocessing and running options (as ``zplug explain`` has them)."""
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help=inputs_help)
    group = parser.add_argument_group("model")
    group.add_argument("--model", metavar="NAME",
                       help="a registered model name (zplug plugins) or package.module:factory")
    group.add_argument("--demo", action="store_true", help="the bundled demo model (4 shape classes, 32x32 inputs)")
    group.add_argument("--weights", metavar="FILE", help="a state_dict file for the model (torch.load weights_only)")
    group.add_argument("--class-names", metavar="FILE", help="the model's class names, one per line, in output order")
    group.add_argument("--target", default="pred", metavar="label|pred|INDEX",
                       help="the followed class: the predicted one (pred, default), the folder label (label), "
                       "or a class index or name for all inputs")

    add_preprocessing_options(parser)

    group = parser.add_argument_group("running")
    group.add_argument("--batch-size", type=int, default=16, metavar="N",
                       help="inputs explained together (default 16)")
    group.add_argument("--eval-batch-size", type=int, default=64, metavar="N",
                       help="perturbed inputs per forward pass of the metrics (default 64)")
    group.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    group.add_argument("--seed", type=int, default=0,
                       help="random seed; batch b uses seed+b (noise baselines, random relevance, smoothgrad)")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="show a progress bar on stderr (default: on a terminal, for runs over a second)")


@attrs.frozen(kw_only=True)
class Dataset:
    """Images loaded for one model: batches of ``(inputs, target)`` and where they came from."""

    paths: tuple[str, ...]
    samples: tuple[Any, ...]
    batches: tuple[tuple[Any, Any], ...]

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self) -> str:
        """``N inputs from a, b``."""
        return f"{len(self)} input{'s' if len(self) != 1 else ''} from {', '.join(self.paths)}"


@attrs.frozen(kw_only=True)
class Setup:
    """The model, its input convention and the device, checked once."""

    model: Any
    label: str
    convention: Any
    device: str


def load_setup(args: argparse.Namespace) -> Setup:
    """Build the model and its input convention from the options."""
    from zplug.cli._models import build_model, with_options
    from zplug.cli.explain import CommandError

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.eval_batch_size < 1:
        raise CommandError(f"--eval-batch-size must be at least 1 (got {args.eval_batch_size})")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CommandError("--device cuda: CUDA is not available here; use --device cpu")
    loaded = build_model(args.model, args.demo, args.weights)
    convention = with_options(
        loaded.convention, resize=args.resize, crop=args.crop, normalize=args.normalize, mean=args.mean,
        std=args.std, class_names=args.class_names,
    )
    return Setup(model=loaded.module.to(args.device), label=loaded.label, convention=convention, device=args.device)


def load_dataset(args: argparse.Namespace, setup: Setup, paths: Sequence[str] | None = None) -> Dataset:
    """Collect and load the images of ``paths`` (default: the positional inputs, or the demo's samples)."""
    import torch

    from zplug.cli.explain import CommandError, parse_target
    from zplug.inputs import collect_inputs, load_batch

    paths = list(args.inputs if paths is None else paths)
    if not paths:
        if not args.demo:
            raise CommandError("no inputs: give image files, folders or ImageFolder trees (or --demo for its samples)")
        from zplug.demo.samples import samples_dir

        paths = [str(samples_dir())]
    samples = collect_inputs(paths, setup.convention.classes)
    target = parse_target(args.target, setup.convention.classes, samples)
    pre = setup.convention.preprocess
    batches = []
    for start in range(0, len(samples), args.batch_size):
        part = samples[start : start + args.batch_size]
        x = pre.normalize(torch.from_numpy(load_batch(part, pre))).to(setup.device)
        if target == "pred":
            batches.append((x, None))
        elif target == "label":
            batches.append((x, [sample.label for sample in part]))
        else:
            batches.append((x, target))
    return Dataset(paths=tuple(str(p) for p in paths), samples=tuple(samples), batches=tuple(batches))


def bounds_for(preset: Any, setup: Setup, given: dict[str, Any]) -> dict[str, Any]:
    """``low``/``high`` from the input convention, for a preset that declares them and was not given them."""
    from zplug.preset.loading import load_preset

    loaded = load_preset(preset)
    low, high = setup.convention.preprocess.bounds()
    out = {}
    for key, value in (("low", low), ("high", high)):
        if key in loaded.params and key not in given:
            out[key] = value.to(setup.device) if hasattr(value, "to") else value
    return out


def route_params(
    params: dict[str, Any], targets: dict[str, set[str]], option: str, what: str
) -> dict[str, dict[str, Any]]:
    """Send each ``KEY=VALUE`` to every target (preset, metric, ...) that accepts ``KEY``; unused keys are errors."""
    routed: dict[str, dict[str, Any]] = {name: {} for name in targets}
    for key, value in params.items():
        takers = [name for name, accepted in targets.items() if key in accepted]
        if not takers:
            valid = ", ".join(sorted(set().union(*targets.values()))) or "none"
            raise SpecError(f"{option} {key}: no {what} of this run has a parameter '{key}' (valid: {valid})")
        for name in takers:
            routed[name][key] = value
    return routed


__all__ = ("Dataset", "Setup", "add_data_arguments", "bounds_for", "load_dataset", "load_setup", "route_params")
