"""Shared fixtures: a fresh plugin registry with autoload off, fixed seeds."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def registry():
    """A registry with only the built-in plugins, installed as the default for the test."""
    from zplug.registry import PluginRegistry, set_default_registry

    fresh = PluginRegistry(autoload=False)
    old = set_default_registry(fresh)
    yield fresh
    set_default_registry(old)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0xDEADBEEF)
    yield
