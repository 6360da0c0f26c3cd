"""Fixtures: this plugin registered as its entry point would, and the tiny tokenizer."""

from __future__ import annotations

import pytest
import zplug_transformers.plugin
from zplug_transformers.testing import word_tokenizer

from zplug.registry import PluginRegistry, set_default_registry


@pytest.fixture(autouse=True, scope="module")
def registry():
    """zplug's built-ins and this plugin (as its entry point registers it), installed as the default."""
    fresh = PluginRegistry(autoload=False)
    fresh.register(zplug_transformers.plugin, "transformers")
    old = set_default_registry(fresh)
    yield fresh
    set_default_registry(old)


@pytest.fixture(scope="session")
def tokenizer():
    """A word-level tokenizer built locally (nothing is downloaded)."""
    return word_tokenizer()
