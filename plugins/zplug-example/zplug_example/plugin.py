"""The module named by the entry point: zplug calls its ``zplug_*`` hooks."""

from importlib.resources import files

from zplug import hookimpl
from zplug_example.rules import EpsilonScaled


@hookimpl
def zplug_register_rules():
    """Register the rule; its name is the class attribute ``EpsilonScaled.name``."""
    return [EpsilonScaled]


@hookimpl
def zplug_register_presets():
    """Register the preset shipped in this package; its name is the file stem."""
    return [files("zplug_example") / "presets" / "example_epsilon_scaled.toml"]
