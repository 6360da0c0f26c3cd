"""The ``zplug`` command line: one module per sub-command, listed in :data:`COMMANDS`.

Each command module defines ``add_parser(subparsers)``, which adds its parser and sets
``run=callable(args) -> int | None`` as a default. Errors that zplug raises on purpose
(:class:`zplug.errors.ZplugError`) are printed as one line and exit with status 2; coverage
warnings (:class:`zplug.errors.CoverageWarning`) as ``zplug: warning: ...`` lines on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from zplug.errors import CoverageWarning, ZplugError

COMMANDS: tuple[str, ...] = (
    "zplug.cli.plugins",
    "zplug.cli.presets",
    "zplug.cli.explain",
    "zplug.cli.evaluate",
    "zplug.cli.tune",
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
        with warnings_as_lines():
            return int(args.run(args) or 0)
    except ZplugError as exc:
        print(f"zplug: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zplug: interrupted", file=sys.stderr)
        return 130


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Print each :class:`CoverageWarning` as one ``zplug: warning: ...`` line on stderr (other warnings as usual)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", CoverageWarning)  # zplug issues each once per mapping already
        show = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' hook
            if issubclass(category, CoverageWarning):
                print(f"zplug: warning: {message}", file=sys.stderr, flush=True)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        yield


__all__ = ("COMMANDS", "build_parser", "main", "warnings_as_lines")
