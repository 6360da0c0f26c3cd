"""Importing a user's module for ``--model package.module:factory`` as ``python -m`` would."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType


def import_from_cwd(name: str) -> ModuleType:
    """Import module ``name`` with the current folder first on ``sys.path`` for this import only.

    ``python -m zplug`` puts the current folder on the path, the ``zplug`` console script does
    not; this makes ``--model mypkg.nets:build`` work the same way in both, and leaves
    ``sys.path`` as it was afterwards.
    """
    cwd = os.getcwd()
    added = not any(entry in ("", cwd) for entry in sys.path)
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


__all__ = ("import_from_cwd",)
