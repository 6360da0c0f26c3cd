"""The one way from (preset, parameters) to a loaded preset with its values.

:func:`zplug.resolve`, :func:`zplug.explain` and ``zplug explain`` all go through
:func:`bind_preset`: it loads the preset (once; a loaded :class:`Preset` is used as it is) and,
when an attributor is involved, sends each parameter by name to the attributor or the preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from zplug.errors import SpecError
from zplug.preset.loading import load_preset
from zplug.preset.records import Preset
from zplug.registry import registry_or_default

if TYPE_CHECKING:
    from zplug.registry import PluginRegistry


@attrs.frozen(kw_only=True)
class BoundPreset:
    """A loaded preset and the parameters a caller gave, sent to the preset or the attributor.

    Attributes
    ----------
    preset : Preset or None
        The loaded preset (``None`` if none was given).
    preset_params : dict
        The values given for the preset's parameters, as given.
    attributor_params : dict
        The values given for the attributor's parameters.
    """

    preset: Preset | None
    preset_params: dict[str, Any] = attrs.field(factory=dict)
    attributor_params: dict[str, Any] = attrs.field(factory=dict)

    def values(self) -> dict[str, Any]:
        """The preset's parameter values: its defaults, overridden by :attr:`preset_params` (:meth:`Preset.bind`).

        Raises
        ------
        SpecError
            For a parameter the preset does not declare, or if there is no preset.
        """
        if self.preset is None:
            raise SpecError("no preset to bind parameters to")
        return self.preset.bind(self.preset_params)


def bind_preset(
    preset: str | Path | Preset | None,
    params: Mapping[str, Any],
    *,
    attributor: Any = None,
    registry: PluginRegistry | None = None,
) -> BoundPreset:
    """Load ``preset`` once and send each of ``params`` to it or to the attributor.

    Parameters
    ----------
    preset : str, Path, Preset or None
        A registered preset name, a TOML file, a loaded preset, or ``None`` (no preset).
    params : Mapping[str, Any]
        Parameter values by name.
    attributor : None, str, type or Attributor
        ``None``: every parameter belongs to the preset (:func:`zplug.resolve`). Otherwise a
        registered attributor name or class, whose fields take the parameters of their names,
        or an attributor instance (which takes none: it is already built).
    registry : PluginRegistry or None
        Where names are looked up (the default registry if ``None``).

    Returns
    -------
    BoundPreset

    Raises
    ------
    SpecError
        For a parameter that both or neither of the attributor and the preset accept.
    UnknownNameError
        For an unknown preset or attributor name.
    """
    registry = registry_or_default(registry)
    attributor_names: list[str] = []
    attributor_label = "an attributor instance"
    if isinstance(attributor, (str, type)):
        cls = registry.attributors[attributor] if isinstance(attributor, str) else attributor
        attributor_names = [f.name for f in attrs.fields(cls)]
        attributor_label = f"attributor '{attributor if isinstance(attributor, str) else cls.name}'"
    loaded = preset if preset is None or isinstance(preset, Preset) else load_preset(preset, registry=registry)
    if attributor is None:
        return BoundPreset(preset=loaded, preset_params=dict(params))
    if not params:
        return BoundPreset(preset=loaded)
    preset_names = [] if loaded is None else list(loaded.params)
    to_attributor, to_preset = {}, {}
    for key, value in params.items():
        mine, theirs = key in attributor_names, key in preset_names
        if mine and theirs:
            raise SpecError(
                f"parameter '{key}' is ambiguous: both {attributor_label} and the preset accept it; set it on "
                f"the attributor instance (zplug.attributors.attributor(...)) and pass the preset's value to "
                f"zplug.resolve, then call explain with attributor= and mapping="
            )
        if mine:
            to_attributor[key] = value
        elif theirs or (loaded is not None and not preset_names and not attributor_names):
            to_preset[key] = value
        else:
            valid = ", ".join([*attributor_names, *preset_names]) or "none"
            where = attributor_label + (" or the preset" if loaded is not None else " (and no preset is given)")
            raise SpecError(f"unknown parameter '{key}' for {where} (valid: {valid})")
    return BoundPreset(preset=loaded, preset_params=to_preset, attributor_params=to_attributor)


__all__ = ("BoundPreset", "bind_preset")
