"""Layer types: names and dotted class paths that presets select modules by, resolved to classes late.

A layer type is declared (``zplug_register_layer_types``) with module classes or dotted class
paths such as ``"torch.nn.Conv2d"``. A declared path is resolved only against modules that
are already imported: a module whose class was never imported cannot be in any model, so
nothing is imported to answer "is this module a convolution?". Checking a preset therefore
needs the names only, and listing or checking presets does not import torch.

A class path written in a preset (``types = ["mypkg.layers.Block"]``) never imports anything,
because a preset is data and must not run code: when the preset is checked, the class is looked
up if its module is already imported, otherwise only the top-level package's existence is
checked (finding a package runs none of its code). When the preset is resolved against a model,
the path matches the modules of that class if its module is imported by then, and nothing
otherwise: a class whose module was never imported cannot be in the model.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from zplug.errors import SpecError, unknown_name_message

if TYPE_CHECKING:
    from zplug.registry import PluginRegistry

def class_path(cls_or_path: type | str) -> str:
    """``"torch.nn.Conv2d"`` for the class or the path itself."""
    if isinstance(cls_or_path, str):
        return cls_or_path
    return f"{cls_or_path.__module__}.{cls_or_path.__qualname__}"


def imported_class(cls_or_path: type | str) -> type | None:
    """The class of a declared member if its module is imported, else ``None`` (nothing is imported).

    Raises
    ------
    SpecError
        If the module is imported but has no such class.
    """
    if not isinstance(cls_or_path, str):
        return cls_or_path
    module_name, _, attr_path = cls_or_path.rpartition(".")
    while module_name and module_name not in sys.modules:
        module_name, _, head = module_name.rpartition(".")
        attr_path = f"{head}.{attr_path}"
    if not module_name:
        return None
    obj: Any = sys.modules[module_name]
    names = attr_path.split(".")
    for i, attr in enumerate(names):
        if not hasattr(obj, attr):
            if i < len(names) - 1:
                return None  # a submodule on the way to the class, not imported yet
            raise SpecError(f"cannot find class '{cls_or_path}' (module '{module_name}' has no '{attr}')")
        obj = getattr(obj, attr)
    return obj


class LayerTypes(Mapping):
    """Layer-type names and their members, merged over all plugins.

    ``name in layer_types`` and iteration need no imports; ``layer_types[name]`` returns the
    member classes whose modules are imported (the only ones a model can contain).
    """

    def __init__(self, declared: Mapping[str, tuple[type | str, ...]]) -> None:
        self._declared = dict(declared)

    def declared(self, name: str) -> tuple[type | str, ...]:
        """The members of ``name`` as declared: classes and dotted class paths."""
        return self._declared[name]

    def __getitem__(self, name: str) -> tuple[type, ...]:
        classes = (imported_class(member) for member in self._declared[name])
        return tuple(dict.fromkeys(cls for cls in classes if cls is not None))

    def __contains__(self, name: object) -> bool:
        return name in self._declared

    def __iter__(self) -> Iterator[str]:
        return iter(self._declared)

    def __len__(self) -> int:
        return len(self._declared)


def merge_layer_types(pairs: Iterable[tuple[str, Iterable[type | str]]]) -> LayerTypes:
    """Merge ``(name, members)`` pairs: a member declared twice (as a class or as its path) is kept once."""
    merged: dict[str, dict[str, type | str]] = {}
    for name, members in pairs:
        known = merged.setdefault(name, {})
        for member in members:
            known.setdefault(class_path(member), member)
    return LayerTypes({name: tuple(members.values()) for name, members in merged.items()})


def check_layer_type(type_name: str, registry: PluginRegistry) -> None:
    """Check a layer type name or a class path as written in a preset, importing nothing new.

    Raises
    ------
    SpecError
        For an unknown name, a malformed path, or a class path that cannot exist.
    """
    if type_name in registry.layer_types:
        return
    if "." not in type_name:
        message = unknown_name_message("layer type", type_name, registry.layer_types)
        raise SpecError(message[:-1] + "; or a class path such as 'torch.nn.Conv2d')")
    top = _check_path(type_name)
    if top in sys.modules:
        cls = imported_class(type_name)
        if cls is not None:
            _check_module_class(type_name, cls)
    elif importlib.util.find_spec(top) is None:  # finds the package on the path without running it
        raise SpecError(f"cannot find '{type_name}' (no module '{top}')")


def layer_classes(type_name: str, registry: PluginRegistry) -> tuple[type, ...]:
    """Return the module classes of a layer type name or a dotted class path (``"torch.nn.Conv2d"``)."""
    layer_types = registry.layer_types
    if type_name in layer_types:
        return layer_types[type_name]
    if "." not in type_name:
        check_layer_type(type_name, registry)  # raises the unknown-name message
    _check_path(type_name)
    cls = imported_class(type_name)  # never imports: a class not imported yet is in no model
    return () if cls is None else (_check_module_class(type_name, cls),)


def _check_module_class(path: str, cls: Any) -> type:
    torch = sys.modules.get("torch")
    if not (torch is not None and isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise SpecError(f"'{path}' is not a torch.nn.Module class")
    return cls


def _check_path(path: str) -> str:
    parts = path.split(".")
    if not all(p.isidentifier() for p in parts):
        raise SpecError(f"'{path}' is not a dotted class path such as 'torch.nn.Conv2d'")
    return parts[0]


def import_class(path: str) -> Any:
    """Import ``package.module.Class`` (the longest importable module prefix, then attributes)."""
    _check_path(path)
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ImportError:
            continue
        except Exception as exc:  # a module that fails on import must not crash the loader
            raise SpecError(f"cannot import '{module_name}' ({type(exc).__name__}: {exc})") from None
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise SpecError(f"cannot find class '{path}' (module '{module_name}' has no '{attr}')")
            obj = getattr(obj, attr)
        return obj
    raise SpecError(f"cannot import '{path}' (no module '{parts[0]}')")


__all__ = (
    "LayerTypes",
    "check_layer_type",
    "class_path",
    "import_class",
    "imported_class",
    "layer_classes",
    "merge_layer_types",
)
