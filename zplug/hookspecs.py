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

Registration hooks take no arguments and return declarations. Hook wrappers are not
supported on them: the registry calls each implementation on its own so that it can
record which plugin supplied what.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable
    from pathlib import Path

    import torch

PROJECT = "zplug"
hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorator for plugin hook implementations: ``from zplug import hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def zplug_register_rules() -> Sequence[type]:
    """Return rule classes (subclasses of :class:`zplug.rules.Rule`).

    Each class sets a unique ``name`` class attribute; presets and
    :func:`zplug.rules.make_rule` refer to the rule by it (``rule = "epsilon"``).
    The class's attrs fields are its parameters, validated on construction.
    Return an empty sequence or ``None`` to register nothing.
    """


@hookspec
def zplug_register_canonizers() -> Sequence[type]:
    """Return canonizer classes, each with a unique ``name`` class attribute.

    Presets list canonizers by name (``canonizers = ["merge_batchnorm"]``).
    """


@hookspec
def zplug_register_attributors() -> Sequence[type]:
    """Return attributor classes (gradient, smoothgrad, ...), each with a unique ``name``."""


@hookspec
def zplug_register_layer_types() -> Mapping[str, Sequence[type[torch.nn.Module]]]:
    """Map layer-type names used in presets (``types = ["convolution"]``) to module classes.

    Unlike other registrations, a layer type may be extended by several plugins:
    the classes are merged, so a plugin can add its own module class to ``"activation"``.
    ``isinstance`` decides membership, so subclasses belong to their parents' types.
    """


@hookspec
def zplug_register_presets() -> Sequence[Traversable | Path]:
    """Return preset files (TOML), e.g. ``importlib.resources.files(pkg) / "presets" / "x.toml"``.

    The preset's name is the file's stem.
    """


@hookspec
def zplug_register_models() -> Mapping[str, Callable[..., torch.nn.Module]]:
    """Map model names for the command line (``zplug mapping vgg16``) to factories.

    A factory is called without arguments and returns an ``nn.Module`` with random
    or bundled weights; the CLI loads ``--weights FILE`` into it afterwards.
    """


@hookspec
def zplug_suggest_canonizers(model: torch.nn.Module) -> Sequence[str] | Sequence[tuple[str, str]] | None:
    """Name the canonizers this plugin recommends for ``model``.

    Return ``None`` (or an empty list) when the plugin knows nothing about the model.
    Items are canonizer names, or ``(name, reason)`` pairs; the reason is shown in the
    mapping. Suggestions are applied only where a preset says ``canonizers = "auto"``.
    """


def hook_names() -> list[str]:
    """Return the names of all hook specifications, sorted."""
    return sorted(name for name, value in globals().items() if name.startswith("zplug_") and callable(value))




__all__ = ("PROJECT", "hook_names", "hookimpl", "hookspec")
