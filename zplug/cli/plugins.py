"""``zplug plugins [--all] [--json]``: what each plugin registered, and load errors."""

from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    """Register the ``plugins`` sub-command."""
    parser = subparsers.add_parser("plugins", help="list installed plugins and what they register")
    parser.add_argument("--all", action="store_true", help="include zplug's built-in plugin")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args) -> int:
    """List plugins."""
    from zplug.registry import default_registry

    infos = default_registry().plugins(include_builtin=args.all)
    if args.json:
        print(json.dumps([info.to_dict() for info in infos], indent=2))
        return 0
    if not infos:
        print("no third-party plugins installed (use --all to show built-ins)")
    for info in infos:
        version = f" {info.version}" if info.version else ""
        dist = f" ({info.distribution}{version})" if info.distribution else ""
        print(f"{info.name}{dist}{' [builtin]' if info.builtin else ''}")
        for kind, names in info.registered.items():
            print(f"  {kind}: {', '.join(names)}")
        if info.error:
            print(f"  error: {info.error}")
    return 0
