"""Built-in plugin: registers zplug's presets, the ``presets/*.toml`` files of this package.

They are Zennit's nine composites under Zennit's names, registered through
``zplug_register_presets`` exactly like a plugin's presets.
"""

from __future__ import annotations

from importlib.resources import files

from zplug.hookspecs import hookimpl


@hookimpl
def zplug_register_presets():
    """Register the built-in presets (Zennit's composites under Zennit's names)."""
    folder = files("zplug.preset") / "presets"
    return sorted((f for f in folder.iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)
