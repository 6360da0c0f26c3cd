"""The error tree of zplug: one base class, one subclass per kind of mistake.

Every message names what went wrong, where, and how to fix it. The CLI prints
``str(error)`` without a traceback and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class ZplugError(Exception):
    """Base class of every error that zplug raises on purpose."""


class SpecError(ZplugError, ValueError):
    """A preset (TOML) or rule parameter is invalid.

    Parameters
    ----------
    message : str
        The problem and its fix.
    file : str or None
        The file the problem is in, if any.
    keypath : sequence of str or int
        The location inside the file, e.g. ``("layer_map", 2, "rule")``.
    """

    def __init__(self, message: str, *, file: str | None = None, keypath: Sequence[str | int] = ()) -> None:
        self.message = message
        self.file = file
        self.keypath = tuple(keypath)
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.file, format_keypath(self.keypath)) if p]
        return ": ".join([*parts, self.message])

    def at(self, *keys: str | int) -> SpecError:
        """Return a copy located one level further out (``keys`` are prepended)."""
        return SpecError(self.message, file=self.file, keypath=(*keys, *self.keypath))

    def in_file(self, file: str) -> SpecError:
        """Return a copy that names ``file`` (unless it already names one)."""
        return SpecError(self.message, file=self.file or file, keypath=self.keypath)


class UnknownNameError(ZplugError, KeyError):
    """A rule, canonizer, attributor, preset or layer type name is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginConflictError(ZplugError):
    """Two plugins registered the same name and the name was used unqualified."""


class PluginLoadError(ZplugError):
    """A plugin could not be imported or registered."""


class ModelMismatchError(ZplugError):
    """A mapping, preset or rule does not fit the model it is applied to."""


class CoverageError(ModelMismatchError):
    """In strict mode: operations on the path from the input to the output that no rule covers.

    The message lists them (``module path: op (treatment)``), as :class:`CoverageWarning` names
    them otherwise; ``str(mapping)`` shows the whole coverage section.
    """


class CoverageWarning(UserWarning):
    """An operation that no rule covers keeps its plain gradient (relevance is then not LRP's).

    Issued once per mapping, by :func:`zplug.explain`, ``mapping.applied`` and the CLI, for each
    uncovered operation (``"features.3.se: mul (no rule): ..."``), and when ``canonizers = "auto"``
    could not trace the model. ``warnings.simplefilter("error", zplug.CoverageWarning)`` or
    ``strict=True`` makes them errors.
    """


class RelevanceError(ZplugError, RuntimeError):
    """Relevance could not be computed for a layer (e.g. its input was modified in place)."""


class CanonizerError(ZplugError, ValueError):
    """A canonizer cannot be applied to a model (the message says why and what to do)."""


class NotTraceableError(CanonizerError):
    """``torch.fx`` cannot trace the model (data-dependent control flow, unsupported calls ...)."""


class InputError(ZplugError):
    """An input path is missing, empty, or not a readable image."""


class CommandError(ZplugError):
    """A command-line option is invalid or cannot be honoured here."""


class OutputError(CommandError):
    """``zplug explain`` cannot write its files: ``--out`` or a name from ``--name-format`` cannot be used."""


class PlotUnavailableError(ZplugError):
    """Curve plots need matplotlib (the ``plot`` extra), which is not installed."""


class TrialLogError(ZplugError):
    """A tuning trial log cannot be read, or was written for another configuration."""


class OutputExistsError(ZplugError):
    """An output file exists and ``overwrite`` was not given."""


class DistributedError(ZplugError):
    """The process group could not be set up (e.g. ``--device cuda`` on a rank without a GPU)."""


def format_keypath(keypath: Iterable[str | int]) -> str:
    """Format ``("layer_map", 2, "rule")`` as ``layer_map[2].rule``."""
    out = ""
    for key in keypath:
        if isinstance(key, int):
            out += f"[{key}]"
        else:
            out += f".{key}" if out else str(key)
    return out


def unknown_name_message(kind: str, name: str, known: Iterable[str]) -> str:
    """Build ``unknown rule 'x' (did you mean 'y'? known: a, b, c)``."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    listing = ", ".join(known) if known else "none registered"
    return f"unknown {kind} '{name}' ({hint}known: {listing})"


__all__ = (
    "CanonizerError",
    "CommandError",
    "CoverageError",
    "CoverageWarning",
    "DistributedError",
    "InputError",
    "ModelMismatchError",
    "NotTraceableError",
    "OutputError",
    "OutputExistsError",
    "PluginConflictError",
    "PlotUnavailableError",
    "PluginLoadError",
    "RelevanceError",
    "SpecError",
    "TrialLogError",
    "UnknownNameError",
    "ZplugError",
    "format_keypath",
    "unknown_name_message",
)
