"""The command line fails in one line and stops quietly when its reader goes away."""

from __future__ import annotations

import subprocess
import sys

import pytest

ZPLUG = [sys.executable, "-m", "zplug"]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["explian"], "zplug: error: argument COMMAND: invalid choice: 'explian' (choose from {choices}) "
                      "(see zplug --help)"),
        (["presets", "--jsn"], "zplug: error: unrecognized arguments: --jsn (see zplug --help)"),
        (["explain", "--batch-size", "x"],
         "zplug explain: error: argument --batch-size: invalid int value: 'x' (see zplug explain --help)"),
    ],
)
def test_argument_errors_are_one_line_without_the_usage_block(argv, line):
    from zplug.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # zplug's and the installed plugins'
    run = subprocess.run([*ZPLUG, *argv], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [line.replace("{choices}", ", ".join(f"'{c}'" for c in commands))]


def test_a_broken_pipe_ends_the_command_with_141_and_no_traceback(monkeypatch, capsys):
    from zplug.cli import main

    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["presets"]) == 141
    assert capsys.readouterr().err == ""
