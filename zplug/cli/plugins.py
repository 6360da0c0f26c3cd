"""``zplug plugins [--all] [--json]``: what each plugin registered, and load errors."""

from __future__ import annotations

import argparse
import json
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zplug.registry import PluginInfo


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``plugins`` sub-command."""
    parser = subparsers.add_parser(
        "plugins",
        help="list installed plugins and what they register",
        description="List third-party plugins: distribution, version, what each registered, and load errors.",
    )
    parser.add_argument("--all", action="store_true", help="include zplug's built-in plugin")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """List plugins; returns 0 (a broken plugin is reported, not an error of this command)."""
    from zplug.registry import default_registry

    registry = default_registry()
    with warnings.catch_warnings():  # load errors are part of the listing, not warnings here
        warnings.simplefilter("ignore", RuntimeWarning)
        infos = registry.plugins(include_builtin=args.all)
        conflicts = registry.conflicts()
    if args.json:
        print(json.dumps([info.to_dict() for info in infos], indent=2))
        return 0
    if not infos:
        print("no third-party plugins installed (--all shows zplug's built-in plugin)")
    for info in infos:
        if not info.disabled:
            print(format_plugin(info))
    disabled = [info.name for info in infos if info.disabled]
    if disabled:
        print(f"disabled (ZPLUG_DISABLE_PLUGINS): {', '.join(disabled)}")
    for name in registry.unmatched_disabled():
        print(f"ZPLUG_DISABLE_PLUGINS: '{name}' matches no installed plugin, distribution or built-in module")
    for kind, names in conflicts.items():
        for name, owners in names.items():
            choices = " or ".join(f"'{owner}:{name}'" for owner in owners)
            print(f"conflict: {kind[:-1]} '{name}' is registered by {len(owners)} plugins; use {choices}")
    return 0


def format_plugin(info: PluginInfo) -> str:
    """Format one plugin as a heading line and indented details."""
    dist = f"{info.distribution} {info.version or '(version unknown)'}" if info.distribution else "not installed"
    flags = (" [builtin]" if info.builtin else "") + (" [disabled]" if info.disabled else "")
    lines = [f"{info.name}: {dist}{flags}"]
    if info.modules:
        lines.append(f"  module: {', '.join(info.modules)}")
    lines.extend(f"  {kind.replace('_', ' ')}: {', '.join(names)}" for kind, names in info.registered.items())
    lines.extend(
        f"  changes built-in layer type '{kind}' (and so the built-in presets): adds {', '.join(members)}"
        for kind, members in info.extends_builtin.items()
    )
    if info.error:
        lines.append(f"  error: {info.error}")
    return "\n".join(lines)
