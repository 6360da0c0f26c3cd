"""Built-in plugin: registers the demo model under the name ``demo``."""

from __future__ import annotations

from zplug.demo.model import load_model
from zplug.hookspecs import hookimpl


@hookimpl
def zplug_register_models():
    """Register the bundled demo model (:func:`zplug.demo.load_model`)."""
    return {"demo": load_model}
