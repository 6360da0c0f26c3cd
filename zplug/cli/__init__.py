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


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the command and pointing to its ``--help``.

    argparse's default prints the whole usage block before the error, which buries the one line
    that matters in scripts and logs. Sub-command parsers are of this class too.
    """

    def error(self, message: str) -> None:  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every sub-command registered."""
    parser = OneLineParser(prog="zplug", description="Layer-wise Relevance Propagation for PyTorch.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(module_name).add_parser(subparsers)
    _add_plugin_commands(subparsers)
    return parser


def _add_plugin_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the commands plugins register (``zplug_register_commands``); a broken one is one warning line."""
    from zplug.registry import default_registry

    with warnings.catch_warnings():  # a plugin that fails to load is listed by `zplug plugins`
        warnings.simplefilter("ignore", RuntimeWarning)
        entries = default_registry().commands.entries()
    for entry in entries:
        where = f"plugin '{entry.plugin}': command '{entry.name}'"
        if entry.name in subparsers.choices:
            print(f"zplug: warning: {where} is already taken (by zplug or an earlier plugin); ignored", file=sys.stderr)
            continue
        try:
            importlib.import_module(entry.obj).add_parser(subparsers)
        except Exception as exc:  # a broken plugin must not take the command line down
            print(f"zplug: warning: {where} is broken ({entry.obj}: {type(exc).__name__}: {exc}); ignored",
                  file=sys.stderr)
            continue
        if entry.name not in subparsers.choices:
            print(f"zplug: warning: {where}: {entry.obj}.add_parser() added no parser '{entry.name}'",
                  file=sys.stderr)


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
    except BrokenPipeError:
        # The reader went away (``zplug presets | head -1``): stop quietly, as Unix tools do. Python
        # would complain again when it flushes stdout at exit, so point stdout at /dev/null first.
        _silence_stdout()
        return 141


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor behind stdout (e.g. captured in tests)
        pass


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


__all__ = ("COMMANDS", "OneLineParser", "build_parser", "main", "warnings_as_lines")
