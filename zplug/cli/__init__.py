"""The ``zplug`` command line: one module per sub-command, listed in :data:`COMMANDS`.

Each command module defines ``add_parser(subparsers)``, which adds its parser and sets
``run=callable(args) -> int | None`` as a default. Errors that zplug raises on purpose
(:class:`zplug.errors.ZplugError`) are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from zplug.errors import ZplugError

COMMANDS: tuple[str, ...] = (
    "zplug.cli.plugins",
    "zplug.cli.presets",
    "zplug.cli.explain",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every sub-command registered."""
    parser = argparse.ArgumentParser(prog="zplug", description="Layer-wise Relevance Propagation for PyTorch.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ZplugError as exc:
        print(f"zplug: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zplug: interrupted", file=sys.stderr)
        return 130


__all__ = ("COMMANDS", "build_parser", "main")
