"""Built-in plugin: registers the demo models under the names ``demo`` (a CNN) and ``demo_vit``."""

from __future__ import annotations

from zplug.hookspecs import hookimpl


def load_model():
    """The bundled demo model with its trained weights (:func:`zplug.demo.load_model`)."""
    from zplug.demo.model import load_model

    return load_model()


def load_vit():
    """The bundled demo vision transformer with its trained weights (:func:`zplug.demo.load_vit`)."""
    from zplug.demo.vit import load_vit

    return load_vit()


@hookimpl
def zplug_register_models():
    """Register the bundled demo models (built, and torch imported, when a factory is called)."""
    return {"demo": load_model, "demo_vit": load_vit}
