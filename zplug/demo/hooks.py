"""Built-in plugin: registers the demo model under the name ``demo``."""

from __future__ import annotations

from zplug.hookspecs import hookimpl


def load_model():
    """The bundled demo model with its trained weights (:func:`zplug.demo.load_model`)."""
    from zplug.demo.model import load_model

    return load_model()


@hookimpl
def zplug_register_models():
    """Register the bundled demo model (built, and torch imported, when the factory is called)."""
    return {"demo": load_model}
