"""Models for ``zplug explain``: the demo, registered names and factories, weights, input conventions.

A model's *input convention* (:class:`Convention`) says how image files become its inputs
(resize, crop, mean/std normalisation, see :class:`zplug.inputs.Preprocess`) and, if known, the
names of its classes. It is decided in this order:

1. the bundled demo model (``--demo`` or ``--model demo``): 32x32 inputs in [0, 1], its four shape classes;
2. a model with an attribute ``zplug_input``, a dict with any of the keys ``resize``, ``crop``,
   ``mean``, ``std`` and ``classes`` (a factory can set it on the model it returns);
3. the first plugin whose ``zplug_input_convention(model)`` hook answers, with the same keys
   (a plugin for a model zoo declares its classifiers' convention, e.g. ImageNet's);
4. any other model: images as they are, in [0, 1].

Command-line options (``--resize``, ``--crop``, ``--normalize``, ``--mean``/``--std``,
``--class-names``) override single parts of it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from zplug.errors import ModelMismatchError, SpecError
from zplug.inputs import InputError, Preprocess

if TYPE_CHECKING:
    from zplug.registry import PluginRegistry

#: ImageNet's per-channel mean and standard deviation of images in [0, 1] (``--normalize imagenet``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The keys of a declared convention (a model's ``zplug_input``, a plugin's ``zplug_input_convention``).
CONVENTION_KEYS = ("classes", "crop", "mean", "resize", "std")


@attrs.frozen(kw_only=True)
class Convention:
    """How images become a model's inputs, and what its outputs are called.

    Attributes
    ----------
    preprocess : Preprocess
        Resize, crop and normalisation.
    classes : tuple of str or None
        The class names in output order, if known.
    source : str
        Where the convention came from (shown in the summary).
    """

    preprocess: Preprocess
    classes: tuple[str, ...] | None = None
    source: str = "default"


@attrs.frozen(kw_only=True)
class LoadedModel:
    """A model ready to explain: the module in ``eval()`` mode, its label and input convention."""

    module: Any
    label: str
    convention: Convention


def load_weights(model: Any, path: str, label: str) -> None:
    """Load a ``state_dict`` file into ``model`` (see :mod:`zplug.cli._weights`).

    Raises
    ------
    InputError
        If the file is missing, not a weights-only torch file, or holds NaN or infinite values.
    ModelMismatchError
        If the weights do not fit the model.
    """
    from zplug.cli._weights import load_weights as load

    load(model, path, label)


def check_model_options(model: str | None, demo: bool) -> None:
    """Raise :class:`SpecError` unless exactly one of ``--model`` and ``--demo`` is given."""
    if demo and model:
        raise SpecError("give either --demo or --model, not both")
    if not demo and not model:
        raise SpecError("no model: give --model NAME (a registered model or package.module:factory) or --demo")


def build_model(model: str | None, demo: bool, weights: str | None) -> LoadedModel:
    """Build the model that ``--model``/``--demo``/``--weights`` describe, in evaluation mode.

    Raises
    ------
    SpecError
        If neither or both of ``model`` and ``demo`` are given.
    UnknownNameError, ModelMismatchError, InputError
        For an unknown model, a factory that fails, or weights that cannot be loaded.
    """
    check_model_options(model, demo)
    if demo:
        from zplug.demo.model import DemoNet, weights_path

        module = DemoNet()
        load_weights(module, str(weights or weights_path()), "demo")
        return LoadedModel(module=module.eval(), label="demo", convention=convention_of(module))
    from zplug.cli.presets import load_model

    module = load_model(model)
    if weights:
        load_weights(module, weights, model)
    return LoadedModel(module=module.eval(), label=model, convention=convention_of(module))


def convention_of(module: Any, registry: PluginRegistry | None = None) -> Convention:
    """Return the input convention of ``module`` (see the module docstring).

    Raises
    ------
    ModelMismatchError
        If the model or a plugin declares a convention with unknown keys.
    """
    from zplug.demo.data import CLASSES, IMAGE_SIZE
    from zplug.registry import registry_or_default

    if _is_demo(module):
        preprocess = Preprocess(resize=IMAGE_SIZE, crop=IMAGE_SIZE)
        return Convention(preprocess=preprocess, classes=tuple(CLASSES), source="demo model convention")
    declared = getattr(module, "zplug_input", None)
    if isinstance(declared, dict):
        return declared_convention(declared, f"{type(module).__name__}.zplug_input", "model.zplug_input")
    answer = registry_or_default(registry).input_convention(module)
    if answer is not None:
        declared, plugin = answer
        declared = dict(declared)
        source = f"{declared.pop('source', 'input convention')} (plugin '{plugin}')"
        return declared_convention(declared, f"plugin '{plugin}': the input convention of {type(module).__name__}",
                                   source)
    return Convention(preprocess=Preprocess(), source="default")


def _is_demo(module: Any) -> bool:
    # The demo model's module is imported exactly when such a model exists: no import to ask.
    demo = sys.modules.get("zplug.demo.model")
    return demo is not None and isinstance(module, demo.DemoNet)


def declared_convention(declared: dict, where: str, source: str) -> Convention:
    """Build a :class:`Convention` from a dict with any of :data:`CONVENTION_KEYS`."""
    unknown = sorted(set(declared) - set(CONVENTION_KEYS))
    if unknown:
        raise ModelMismatchError(f"{where} has unknown keys {unknown} (known: {', '.join(CONVENTION_KEYS)})")
    mean, std = declared.get("mean"), declared.get("std")
    classes = declared.get("classes")
    try:
        preprocess = Preprocess(
            resize=declared.get("resize"),
            crop=declared.get("crop"),
            mean=None if mean is None else tuple(float(v) for v in mean),
            std=None if std is None else tuple(float(v) for v in std),
        )
    except (SpecError, TypeError, ValueError) as exc:
        raise ModelMismatchError(f"{where}: {exc}") from None
    return Convention(preprocess=preprocess, classes=None if classes is None else tuple(classes), source=source)


def _channels(option: str, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SpecError(f"{option} {text!r}: expected numbers separated by commas, e.g. 0.485,0.456,0.406") from None
    if len(values) not in (1, 3):
        raise SpecError(f"{option} {text!r}: give 1 or 3 numbers (one per colour channel), not {len(values)}")
    return values * 3 if len(values) == 1 else values


def with_options(
    convention: Convention,
    *,
    resize: int | None = None,
    crop: int | None = None,
    normalize: str = "auto",
    mean: str | None = None,
    std: str | None = None,
    class_names: str | None = None,
) -> Convention:
    """Override parts of ``convention`` with command-line options (``0`` turns resize or crop off).

    Raises
    ------
    SpecError
        For a lone ``--mean``/``--std``, malformed numbers, or a zero standard deviation.
    InputError
        If the class-names file does not exist.
    """
    pre = convention.preprocess
    if resize is not None:
        pre = attrs.evolve(pre, resize=resize or None)
    if crop is not None:
        pre = attrs.evolve(pre, crop=crop or None)
    if (mean is None) != (std is None):
        raise SpecError("--mean and --std go together: give both, e.g. --mean 0.5 --std 0.25")
    if mean is not None and std is not None:
        means, stds = _channels("--mean", mean), _channels("--std", std)
        if any(v == 0 for v in stds):
            raise SpecError(f"--std {std!r}: a standard deviation of 0 divides by zero")
        pre = attrs.evolve(pre, mean=means, std=stds)
    elif normalize == "imagenet":
        pre = attrs.evolve(pre, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    elif normalize == "none":
        pre = attrs.evolve(pre, mean=None, std=None)
    classes = convention.classes
    if class_names is not None:
        classes = read_class_names(class_names)
    return attrs.evolve(convention, preprocess=pre, classes=classes)


def read_class_names(path: str) -> tuple[str, ...]:
    """Read class names, one per line in output order (blank lines and ``#`` comments are skipped).

    Raises
    ------
    InputError
        If the file is missing, not a regular file, not UTF-8 text, names no class, or names one twice.
    """
    file = Path(path)
    if not file.exists():
        raise InputError(f"class-names file '{path}' does not exist")
    if not file.is_file():
        raise InputError(f"class-names file '{path}' is not a regular file")
    if file.stat().st_size > 2**24:
        raise InputError(f"class-names file '{path}' is over 16 MB; give one class name per line")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"class-names file '{path}' is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    names = [(number, line.strip()) for number, line in enumerate(lines, 1)]
    names = [(number, name) for number, name in names if name and not name.startswith("#")]
    if not names:
        raise InputError(f"class-names file '{path}' names no class; give one name per line, in output order")
    first: dict[str, int] = {}
    for number, name in names:
        if name in first:
            raise InputError(
                f"class-names file '{path}' names '{name}' twice (lines {first[name]} and {number}); class names "
                "must be unique"
            )
        first[name] = number
    return tuple(name for _, name in names)


def class_name(classes: Sequence[str] | None, index: int) -> str:
    """Return the name of class ``index``, or the index itself when the names are unknown."""
    if classes is not None and 0 <= index < len(classes):
        return classes[index]
    return str(index)


__all__ = (
    "CONVENTION_KEYS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Convention",
    "LoadedModel",
    "build_model",
    "check_model_options",
    "class_name",
    "convention_of",
    "declared_convention",
    "load_weights",
    "read_class_names",
    "with_options",
)
