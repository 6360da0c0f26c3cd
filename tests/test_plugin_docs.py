"""The plugin docs cannot drift: code blocks are the real files, every hook is documented with its signature."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from zplug import hookspecs

ROOT = Path(__file__).resolve().parents[1]
#: a fenced block whose info string names a file: ```python plugins/zplug-example/zplug_example/rules.py
FILE_BLOCK = re.compile(r"^```\w+ (?P<path>\S+)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^## `(?P<signature>zplug_\w+\(.*\).*)`$", re.MULTILINE)


def file_blocks(doc: str) -> dict[str, str]:
    return {m["path"]: m["code"] for m in FILE_BLOCK.finditer((ROOT / doc).read_text())}


def test_plugins_md_shows_every_file_of_the_example_plugin():
    example = "plugins/zplug-example/"
    assert sorted(file_blocks("docs/plugins.md")) == [
        example + path
        for path in (
            "pyproject.toml",
            "zplug_example/__init__.py",
            "zplug_example/plugin.py",
            "zplug_example/presets/example_epsilon_scaled.toml",
            "zplug_example/rules.py",
        )
    ]


@pytest.mark.parametrize("path", sorted(file_blocks("docs/plugins.md")))
def test_plugins_md_code_block_is_the_real_file(path):
    assert file_blocks("docs/plugins.md")[path] == (ROOT / path).read_text(), f"update docs/plugins.md from {path}"


def signature(hook) -> str:
    """``name(arg: annotation, ...) -> return annotation``, as the hookspec declares it."""
    sig = inspect.signature(hook)
    args = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{hook.__name__}({args}) -> {sig.return_annotation}"


def test_every_hook_is_documented_with_its_signature():
    documented = HEADING.findall((ROOT / "docs/hooks.md").read_text())
    assert sorted(documented) == [signature(getattr(hookspecs, name)) for name in hookspecs.hook_names()]


def test_signature_format():
    assert signature(hookspecs.zplug_suggest_canonizers) == (
        "zplug_suggest_canonizers(model: torch.nn.Module) -> Sequence[str | tuple[str, str]] | None"
    )
