"""Layer groups: one gamma per depth of a model, as parameters of a preset that ``zplug tune`` can search.

Pahde et al. (CVPR workshops 2023) choose the gamma rule's parameter separately for the low, middle
and high convolutions and the dense layers. A preset cannot say "the first third of the
convolutions" for any model, so :func:`layer_group_preset` writes one for a given model: it
resolves the base preset, takes the convolutions and dense layers that the base's ``layer_map``
assigns (a first or last layer the base treats specially, e.g. z-box on the input, keeps its
rule), splits the convolutions in model order into up to three groups of nearly equal size, and
returns a preset that ``extends`` the base with one ``[[name_map]]`` entry per group: the gamma
rule with parameter ``gamma_low``, ``gamma_mid``, ``gamma_high`` or ``gamma_dense``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import torch

from zplug.errors import SpecError

#: The names of the convolution groups, low to high.
CONV_GROUPS = ("low", "mid", "high")
_LAYER_MAP = re.compile(r"(^|:)layer_map\[\d+\]$")


@attrs.frozen(kw_only=True)
class LayerGroups:
    """The groups of one model and the preset document that gives each its own gamma.

    Attributes
    ----------
    groups : dict of str to tuple of str
        ``{"low": (module names), ..., "dense": (...)}``; empty groups are left out.
    defaults : dict of str to float
        The parameters ``gamma_<group>`` and their defaults.
    document : dict
        The preset as TOML data (``extends`` the base).
    """

    groups: dict[str, tuple[str, ...]]
    defaults: dict[str, float]
    document: dict[str, Any]

    @property
    def params(self) -> list[str]:
        """The parameter names, ``gamma_low`` ...."""
        return list(self.defaults)


def split(names: list[str], parts: int) -> list[list[str]]:
    """Split ``names`` in order into ``parts`` runs of nearly equal length (longer runs first, none empty)."""
    parts = min(parts, len(names))
    size, extra = divmod(len(names), parts) if parts else (0, 0)
    out, start = [], 0
    for index in range(parts):
        stop = start + size + (1 if index < extra else 0)
        out.append(names[start:stop])
        start = stop
    return out


def layer_group_preset(
    model: torch.nn.Module,
    base: str | Path,
    *,
    extends: str | None = None,
    dense_default: float = 0.0,
    **params: Any,
) -> LayerGroups:
    """Give the low, middle and high convolutions and the dense layers of ``model`` their own gamma.

    Parameters
    ----------
    model : torch.nn.Module
        The model whose modules are grouped (by their names in ``named_modules()``).
    base : str or Path
        The preset to extend (a registered name or a file).
    extends : str or None
        How the written preset names the base (default: ``base`` as given); a relative path is
        relative to the written file.
    dense_default : float
        The default of ``gamma_dense`` (0: the gamma rule is LRP-0 with the base's stabilizer).
    **params
        Values for the base preset's parameters, e.g. ``low`` and ``high``, needed to resolve it.

    Raises
    ------
    SpecError
        If the base preset assigns no convolution or dense layer through its ``layer_map``.
    """
    from zplug.preset.loading import load_preset
    from zplug.registry import default_registry
    from zplug.resolver import resolve

    preset = load_preset(base)
    mapping = resolve(model, preset, **params)
    types = default_registry().layer_types
    conv_classes, dense_classes = types.get("convolution", ()), types.get("linear", ())
    convs, dense = [], []
    for entry in mapping:
        if entry.matched is None or not _LAYER_MAP.search(entry.matched):
            continue
        if issubclass(entry.module_class, conv_classes):
            convs.append(entry.name)
        elif issubclass(entry.module_class, dense_classes):
            dense.append(entry.name)
    if not convs and not dense:
        raise SpecError(
            f"preset '{preset.name}' assigns no convolution or dense layer of this model through its layer_map; "
            "there is nothing to group"
        )
    groups = {name: tuple(run) for name, run in zip(CONV_GROUPS, split(convs, len(CONV_GROUPS)))}
    if dense:
        groups["dense"] = tuple(dense)
    base_gamma = preset.params["gamma"].default if "gamma" in preset.params else 0.25
    if not isinstance(base_gamma, (int, float)) or isinstance(base_gamma, bool):
        base_gamma = 0.25
    defaults = {f"gamma_{g}": float(dense_default if g == "dense" else base_gamma) for g in groups}
    return LayerGroups(groups=groups, defaults=defaults, document=_document(preset, base, extends, groups, defaults))


def _document(preset, base, extends, groups, defaults) -> dict[str, Any]:
    from zplug.preset import ParamRef

    shared = {key: ParamRef(key) for key in ("stabilizer", "zero_params") if key in preset.params}
    params = {
        key: {"default": value, "doc": f"gamma of the {key[6:]} group ({', '.join(groups[key[6:]])})"}
        for key, value in defaults.items()
    }
    entries = [
        {"names": list(names), "rule": {"name": "gamma", "gamma": ParamRef(f"gamma_{group}"), **shared}}
        for group, names in groups.items()
    ]
    return {
        "schema": 1,
        "summary": f"{preset.name} with one gamma per layer group ({', '.join(groups)})",
        "extends": str(extends if extends is not None else base),
        "params": params,
        "name_map": entries,
    }


__all__ = ("CONV_GROUPS", "LayerGroups", "layer_group_preset", "split")
