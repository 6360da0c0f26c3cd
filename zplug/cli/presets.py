"""``zplug presets``, ``zplug check FILE...`` and ``zplug mapping MODEL --preset NAME|FILE``."""

from __future__ import annotations

import sys
import warnings
from typing import Any

from zplug.errors import CoverageError, CoverageWarning, ModelMismatchError, SpecError, UnknownNameError, ZplugError


def add_parser(subparsers) -> None:
    """Register the ``presets``, ``check`` and ``mapping`` sub-commands."""
    parser = subparsers.add_parser("presets", help="list the available presets")
    parser.set_defaults(run=run_presets)

    parser = subparsers.add_parser("check", help="check preset files (exit 0 if all are valid, 2 otherwise)")
    parser.add_argument("files", nargs="+", metavar="FILE", help="preset files (.toml) or registered preset names")
    parser.set_defaults(run=run_check)

    parser = subparsers.add_parser("mapping", help="show which rule each module of a model gets under a preset")
    parser.add_argument(
        "model", metavar="MODEL", help="a model name registered by a plugin, or package.module:factory (no arguments)"
    )
    parser.add_argument("--preset", required=True, metavar="NAME|FILE", help="a preset name or a TOML file")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="set a preset parameter (a TOML value, e.g. gamma=0.5, zero_params='[\"bias\"]'); "
                             "repeatable")
    parser.add_argument("--toml", action="store_true", help="print the mapping as an explicit preset instead")
    parser.add_argument("--strict", action="store_true",
                        help="fail if a module with parameters gets no rule or an operation is not covered")
    parser.add_argument("--input-shape", metavar="C,H,W",
                        help="the shape of one input (without the batch), for the coverage analysis of models that "
                             "torch.fx cannot trace (default: from the model's input convention, e.g. 3,224,224)")
    parser.set_defaults(run=run_mapping)


def run_presets(args) -> int:
    """List presets with their summaries."""
    from zplug.preset.loading import list_presets

    listing = list_presets()
    width = max((len(name) for name in listing), default=0)
    for name, summary in listing.items():
        print(f"{name.ljust(width)}  {summary}")
    return 0


def run_check(args) -> int:
    """Load every file; print ``FILE: ok`` or the one-line error of each."""
    from zplug.preset.loading import load_preset

    status = 0
    for file in args.files:
        try:
            preset = load_preset(file)
        except ZplugError as exc:
            print(f"zplug: error: {exc}", file=sys.stderr)
            status = 2
            continue
        print(f"{file}: ok ({preset.name}: {len(list(preset.entries()))} entries)")
    return status


def parse_params(items: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings; values are read as TOML, falling back to plain strings."""
    from zplug.preset.toml import parse_toml
    from zplug.preset.values import literal, materialize

    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise SpecError(f"--param {item!r}: expected KEY=VALUE, e.g. --param gamma=0.5")
        try:
            value = parse_toml(f"value = {text}")["value"]
        except SpecError:
            value = text
        try:
            params[key] = materialize(literal(value))  # only a tensor written as { tensor = ... } imports torch
        except SpecError as exc:
            raise SpecError(f"--param {key}: {exc.message}") from None
    return params


def load_model(spec: str):
    """Build the model named by ``spec``: a registered model name, or ``package.module:factory``."""
    import torch

    from zplug.registry import default_registry

    models = default_registry().models
    try:
        factory = models[spec]
    except UnknownNameError as exc:
        if ":" not in spec:
            raise UnknownNameError(f"{exc}; or give a factory as package.module:function") from None
        module_name, _, attr = spec.partition(":")
        from zplug.cli._imports import import_from_cwd

        try:
            factory: Any = import_from_cwd(module_name)
        except ImportError as err:
            raise ModelMismatchError(f"cannot import '{module_name}' for model '{spec}': {err}") from None
        for part in attr.split("."):
            if not hasattr(factory, part):
                raise ModelMismatchError(f"module '{module_name}' has no '{attr}' (model '{spec}')") from None
            factory = getattr(factory, part)
    if not callable(factory):
        raise ModelMismatchError(f"model '{spec}' is not callable; give a function that returns a torch.nn.Module")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ModelMismatchError(f"model factory '{spec}' returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def run_mapping(args) -> int:
    """Resolve the preset for the model and print the table (or the explicit preset), and warn about coverage."""
    from zplug.resolver import resolve

    params = parse_params(args.param)
    model = load_model(args.model)
    shape = None if args.input_shape is None else parse_shape(args.input_shape)
    mapping = resolve(model, args.preset, strict=args.strict, **params)
    coverage = mapping.coverage
    if coverage is not None and not coverage.analysed:
        shape = shape or default_input_shape(model)
        if shape is None:
            message = (
                f"the coverage of {mapping.label} on {mapping.model_type} is not known: {coverage.pending}; pass "
                "--input-shape C,H,W to analyse the autograd graph of one call"
            )
            if args.strict:
                raise CoverageError(message)
            warnings.warn(message, CoverageWarning, stacklevel=1)
        else:
            import torch

            mapping.analyse_coverage(model, torch.rand(1, *shape))
    mapping.report_coverage()
    print(mapping.to_toml() if args.toml else mapping, end="" if args.toml else "\n")
    return 0


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``--input-shape 3,224,224``."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(v < 1 for v in shape):
        raise SpecError(f"--input-shape {text!r}: expected positive integers separated by commas, e.g. 3,224,224")
    return shape


def default_input_shape(model) -> tuple[int, ...] | None:
    """``(3, crop, crop)`` from the model's input convention (image models), or ``None`` if it names no size."""
    from zplug.cli._models import convention_of

    pre = convention_of(model).preprocess
    size = pre.crop or pre.resize
    return None if size is None else (3, size, size)
