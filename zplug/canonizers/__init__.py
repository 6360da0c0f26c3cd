"""Canonizers: temporary, exactly reverted rewrites that make a model fit for LRP."""

from zplug.canonizers.base import Canonizer, applied_canonizers

__all__ = ("Canonizer", "applied_canonizers")
