"""zplug-example: an example zplug plugin that adds the ``epsilon_scaled`` rule."""

from zplug_example.rules import EpsilonScaled

__all__ = ("EpsilonScaled",)
