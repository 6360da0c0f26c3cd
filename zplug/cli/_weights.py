"""Loading a weights file into a model for ``zplug explain --weights FILE``, with messages of our own.

The file is read with ``torch.load(..., weights_only=True)``, so it can hold tensors and plain
containers only and never runs code. Accepted contents: a ``state_dict`` (a dict of tensors), or
a checkpoint dict holding one under ``"state_dict"``, ``"model"`` or ``"model_state_dict"``.
Tensors with NaN or infinite values are refused, naming the tensor. Before the model is touched,
the keys and shapes are compared with the model's, so a file for another architecture gets a
message that lists what is missing, unexpected or of another shape.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from typing import Any

from zplug.discovery import InputError, file_kind
from zplug.errors import ModelMismatchError

#: Checkpoint keys under which a state_dict is looked for, in this order.
CHECKPOINT_KEYS: tuple[str, ...] = ("state_dict", "model", "model_state_dict")
#: The advice every "cannot read" message ends with.
SAVE_ADVICE = "save the weights with torch.save(model.state_dict(), FILE)"

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def first_sentence(text: str) -> str:
    """Return the first sentence of ``text`` on one line, without terminal colour codes."""
    text = " ".join(_ANSI.sub("", text).split())
    match = re.search(r"(?<=[.!?])\s", text)
    return (text[: match.start()] if match else text).rstrip(".")


def _short_list(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def _entries(n: int, what: str) -> str:
    return f"{n} {what} entr{'y' if n == 1 else 'ies'}"


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """Read a state_dict from ``path``; return it and the checkpoint key it was found under (or None).

    Raises
    ------
    InputError
        If the file is missing, not a regular file, empty, truncated, not written by
        ``torch.save``, holds Python objects other than tensors, holds no state_dict, or holds
        tensors with NaN or infinite values.
    """
    import torch

    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"weights file '{path}' does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot access weights file '{path}': {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"weights file '{path}' is a folder; give the file that torch.save wrote")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"weights file '{path}' is {file_kind(info.st_mode)}, not a file")
    if info.st_size == 0:
        raise InputError(f"weights file '{path}' is empty; {SAVE_ADVICE}")
    with open(path, "rb") as file:
        magic = file.read(4)
    if magic == _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError):
            raise InputError(
                f"weights file '{path}' is truncated or damaged (its zip archive is incomplete); copy or download "
                f"it again, or {SAVE_ADVICE}"
            ) from None
    elif not magic.startswith(_PICKLE_MAGIC):
        raise InputError(f"weights file '{path}' was not written by torch.save; {SAVE_ADVICE}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds here; all mean "not loadable"
        found = _GLOBAL.search(str(exc))
        if found:
            raise InputError(
                f"weights file '{path}' holds Python objects, not only tensors ({found.group(1)}): it was saved "
                f"with torch.save(model) or holds other classes, and zplug loads tensors only, without running code "
                f"from the file; {SAVE_ADVICE}"
            ) from None
        reason = first_sentence(str(exc)) or type(exc).__name__
        raise InputError(
            f"weights file '{path}' cannot be read: it is truncated or damaged ({reason}); copy or download it "
            f"again, or {SAVE_ADVICE}"
        ) from None
    state, key = _unpack(state, path)
    check_finite(state, path)
    return state, key


def _unpack(state: Any, path: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    import torch

    if not isinstance(state, dict):
        raise InputError(f"weights file '{path}' holds a {type(state).__name__}, not a state_dict; {SAVE_ADVICE}")
    for key in CHECKPOINT_KEYS:
        inner = state.get(key)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner, key
    if not any(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ", ".join(repr(k) for k in list(state)[:5]) or "none"
        raise InputError(
            f"weights file '{path}' holds a dict without tensors (keys: {keys}); zplug takes a state_dict, or a "
            f"checkpoint with one under {', '.join(repr(k) for k in CHECKPOINT_KEYS)}"
        )
    return state, None


def check_finite(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise :class:`InputError` if a floating-point tensor of ``state`` holds NaN or infinite values."""
    import torch

    broken = []
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            broken.append((name, value))
    if broken:
        name, value = broken[0]
        nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
        others = f" (and {len(broken) - 1} other tensors)" if len(broken) > 1 else ""
        raise InputError(
            f"weights file '{path}': tensor '{name}' holds {nan} NaN and {inf} infinite values of {value.numel()}"
            f"{others}; these weights cannot give an explanation: train or download them again"
        )


def mismatch(model: Any, state: dict[str, Any]) -> str | None:
    """Describe how ``state`` differs from ``model.state_dict()`` (keys and shapes), or None if it fits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"'{k}' is {tuple(state[k].shape)} in the file but {tuple(expected[k].shape)} in the model"
        for k in expected
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{_entries(len(missing), 'missing')} ({_short_list(missing)})")
    if unexpected:
        parts.append(f"{_entries(len(unexpected), 'unexpected')} ({_short_list(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape ({_short_list(shapes, 2)})")
    if not parts:
        return None
    text = ", ".join(parts)
    if unexpected and all(k.startswith("module.") for k in state):
        text += "; every key starts with 'module.' (saved from DataParallel): save model.module.state_dict()"
    return text


def load_weights(model: Any, path: str | os.PathLike, label: str) -> str | None:
    """Load the state_dict in ``path`` into ``model``; return the checkpoint key it came from (or None).

    Raises
    ------
    InputError
        If the file cannot be read (see :func:`read_state_dict`).
    ModelMismatchError
        If the weights do not fit the model; the model is then unchanged.
    """
    state, key = read_state_dict(path)
    where = f" (its '{key}' entry)" if key else ""
    problem = mismatch(model, state)
    if problem is not None:
        raise ModelMismatchError(
            f"weights '{path}'{where} do not fit model '{label}': {problem}; give the weights of this architecture, "
            "or the --model they were trained for"
        )
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelMismatchError(
            f"weights '{path}'{where} do not fit model '{label}': {first_sentence(str(exc))}"
        ) from None
    return key


__all__ = ("CHECKPOINT_KEYS", "check_finite", "first_sentence", "load_weights", "mismatch", "read_state_dict")
