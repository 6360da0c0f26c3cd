"""Hook specifications: the contract between zplug and its plugins.

A plugin is a Python module whose ``zplug_*`` functions are decorated with
:data:`hookimpl`. Third-party plugins are announced through the entry-point group
``zplug`` in their ``pyproject.toml``::

    [project.entry-points.zplug]
    example = "zplug_example.plugin"

The entry-point name (``example``) is the plugin's name; ``"example:rule_name"``
selects that plugin's registration when two plugins use the same name.
zplug's own rules, layer types and presets are registered through exactly these
hooks by the built-in plugin modules listed in :data:`zplug.registry.BUILTIN_PLUGINS`.

Registration hooks take no arguments and return declarations. Hook wrappers and
``tryfirst``/``trylast`` have no effect on them: the registry calls each implementation on
its own, so that it can record which plugin supplied what, and a hook that raises marks
only its own plugin as broken. Implementations may accept fewer arguments than a hook's
specification (pluggy's opt-in arguments), never others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable
    from pathlib import Path

    import torch

PROJECT = "zplug"
hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorator for plugin hook implementations: ``from zplug import hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- registration hooks: return declarations; the registry records which plugin made each ------------


@hookspec
def zplug_register_rules() -> Sequence[type] | None:
    """Return rule classes: subclasses of :class:`zplug.rules.Rule`.

    Each class sets a ``name`` class attribute (no ``:``); presets and
    :func:`zplug.rules.rule` refer to the rule by it (``rule = "epsilon"``), or as
    ``"plugin:name"``. The class's attrs fields are its parameters, validated on construction.
    Return ``None`` or an empty sequence to register nothing. A class that is not a
    ``Rule`` subclass, or has no name, marks the plugin as broken.
    """


@hookspec
def zplug_register_canonizers() -> Sequence[type] | None:
    """Return canonizer classes, each with a unique ``name`` class attribute.

    Presets list canonizers by name (``canonizers = ["merge_batchnorm"]``).
    Return ``None`` or an empty sequence to register nothing.
    """


@hookspec
def zplug_register_attributors() -> Sequence[type] | None:
    """Return attributor classes (gradient, smoothgrad, ...), each with a unique ``name`` class attribute.

    Return ``None`` or an empty sequence to register nothing.
    """


@hookspec
def zplug_register_metrics() -> Sequence[type] | None:
    """Return metric classes: subclasses of :class:`zplug.metrics.Metric`, each with a unique ``name``.

    :func:`zplug.evaluate`, ``zplug evaluate --metric NAME`` and ``zplug tune --metric NAME``
    refer to a metric by its name (or ``"plugin:name"``). The class's attrs fields are its
    parameters, validated on construction; ``measure(context)`` returns a
    :class:`zplug.metrics.MetricResult` with one score per sample. Return ``None`` or an empty
    sequence to register nothing. A class that is not a ``Metric`` subclass, or has no name,
    marks the plugin as broken.
    """


@hookspec
def zplug_register_layer_types() -> Mapping[str, Sequence[type[torch.nn.Module] | str]] | None:
    """Map layer-type names used in presets (``types = ["convolution"]``) to module classes.

    A class may be given by its dotted path (``"torch.nn.Conv2d"``): it is then never imported
    by zplug, only looked up once its module is imported (a model containing it implies that), so
    registering, listing and checking presets stays free of heavy imports.
    Unlike other registrations, a layer type may be extended by several plugins:
    the classes are merged, so a plugin can add its own module class to ``"activation"``.
    ``isinstance`` decides membership, so subclasses belong to their parents' types.
    Return ``None`` or an empty mapping to register nothing.
    """


@hookspec
def zplug_register_presets() -> Sequence[Traversable | Path] | None:
    """Return preset files (TOML), e.g. ``importlib.resources.files(pkg) / "presets" / "x.toml"``.

    The preset's name is the file's stem. Files are only read when the preset is used.
    Return ``None`` or an empty sequence to register nothing.
    """


@hookspec
def zplug_register_models() -> Mapping[str, Callable[..., torch.nn.Module]] | None:
    """Map model names for the command line (``zplug mapping vgg16``) to factories.

    A factory is called without arguments and returns an ``nn.Module`` with random
    or bundled weights; the CLI loads ``--weights FILE`` into it afterwards.
    Return ``None`` or an empty mapping to register nothing.
    """


@hookspec
def zplug_register_commands() -> Mapping[str, str] | None:
    """Map command names to modules that add them to the ``zplug`` command line.

    ``{"explain-text": "my_plugin.cli"}`` makes ``zplug explain-text`` available. The module is
    imported when the command line is built and must define ``add_parser(subparsers)``, which
    adds a parser of that name (``subparsers.add_parser("explain-text", ...)``) and sets
    ``run=callable(args) -> int | None`` as its default. It should import nothing heavy at module
    level (``zplug --help`` imports it). A name zplug already uses, or a module that fails, is
    reported as a one-line warning and skipped. Return ``None`` or an empty mapping for none.
    """


@hookspec
def zplug_register_op_treatments() -> Mapping[object, object] | None:
    """Declare how operations without a rule are treated, for the coverage analysis.

    Keys are operation names as the coverage section shows them (``"roll"``, ``"my_op"``),
    functions that ``torch.fx`` records as call targets, ``torch.nn.Module`` classes or their dotted
    paths (``"torchvision.ops.stochastic_depth.StochasticDepth"``, matched without importing it; a call of
    such a module without a rule is judged as one operation, and torch.fx does not trace into it)
    or ``torch.autograd.Function`` classes (their autograd nodes). Values are ``"linear"`` (the
    plain gradient is exact: every output element copies one input element or a constant),
    ``"not covered"``, or a :class:`zplug.coverage.treatments.Treatment`. A plugin's declaration
    overrides zplug's built-in one; two plugins declaring different treatments for the same key
    are a conflict. Return ``None`` or an empty mapping to declare nothing.
    """


# -- model hooks: called with a model ------------------------------------------------------------------


@hookspec
def zplug_suggest_canonizers(model: torch.nn.Module) -> Sequence[str | tuple[str, str]] | None:
    """Name the canonizers this plugin recommends for ``model``.

    Return ``None`` (or an empty list) when the plugin knows nothing about the model.
    Items are canonizer names, or ``(name, reason)`` pairs; the reason is shown in the
    mapping. Suggestions are applied only where a preset says ``canonizers = "auto"``;
    when several plugins suggest a name, the first plugin registered gives the reason.
    The hook must not modify ``model``.
    """


@hookspec
def zplug_input_convention(model: torch.nn.Module) -> Mapping[str, Any] | None:
    """Say how image files become ``model``'s inputs, for models this plugin knows.

    Return ``None`` when the plugin knows nothing about the model, else a mapping with any of
    the keys of a model's ``zplug_input`` attribute: ``resize`` and ``crop`` (pixels),
    ``mean`` and ``std`` (per channel, for images in [0, 1]) and ``classes`` (names in output
    order), plus ``source``, a few words for the command's summary (``"ImageNet convention"``).
    ``zplug explain`` asks when the model declares no ``zplug_input`` itself; the first plugin
    registered that answers decides, and command-line options still override single parts.
    The hook must not modify ``model``; it should not import anything the model's own class
    does not already need.
    """


@hookspec
def zplug_explain_inputs(model: torch.nn.Module, inputs: Any) -> Callable[..., Any] | None:
    """Offer to explain ``inputs`` that are not floating-point tensors (token ids of a language model).

    :func:`zplug.explain` asks only when ``inputs`` is not a floating-point tensor or a tuple of
    them; return ``None`` for any model or inputs the plugin does not know. The answer is a function
    that :func:`zplug.explain` calls in its place, as ``fn(model, inputs, target, preset=...,
    attributor=..., mapping=..., output_index=..., ledger=..., progress=..., strict=...,
    canonizers=..., **params)``, and whose result it returns: an :class:`zplug.Explanation` (or a
    subclass). The first plugin registered that answers decides. The hook must not modify
    ``model`` and should be cheap: it runs before anything else.
    """


def hook_names() -> list[str]:
    """Return the names of all hook specifications, sorted."""
    return sorted(name for name, value in globals().items() if name.startswith("zplug_") and callable(value))


__all__ = ("PROJECT", "hook_names", "hookimpl", "hookspec")
