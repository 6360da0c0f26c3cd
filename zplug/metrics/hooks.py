"""Registers zplug's built-in metrics through the plugin hook (like any third-party plugin)."""

from zplug.hookspecs import hookimpl
from zplug.metrics.perturbation import PixelFlipping, RegionPerturbation, SymmetricRelevanceGain


@hookimpl
def zplug_register_metrics():
    """Register pixel_flipping, region_perturbation and srg."""
    return [PixelFlipping, RegionPerturbation, SymmetricRelevanceGain]
