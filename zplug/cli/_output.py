"""The files of ``zplug explain``: names from ``--name-format``, checks before computing, safe writing.

Rules (docs/cli.md, "Output"):

* ``--out`` must be a folder that is missing or empty; with ``--overwrite`` it may hold files, and
  the files this run writes replace those of the same name (nothing else is deleted or changed).
  It is checked (a folder, writable) before the model is loaded.
* A name from ``--name-format`` is a relative path inside its kind's folder: no empty, ``.`` or
  ``..`` parts, no leading ``/``, ending in a file name, each part short enough for the file
  system. Every file the run will write (heatmaps, inputs, relevance, the contact sheet) gets a
  path of its own, checked before anything is computed.
* Files are written to a temporary name in their folder and renamed into place, so each file is
  complete or absent. Links are never followed inside ``--out``: a folder in the way that is a
  link or a file is an error; an existing link at a file's place is replaced by the file (with
  ``--overwrite``), never written through. Without ``--overwrite`` a file is never replaced,
  even if one appears while the run goes on.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import string
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from zplug.errors import OutputError

#: The fields of ``--name-format``.
NAME_FIELDS = ("sample", "stem", "label", "pred")
#: The folder and extension of each kind of per-input file.
KINDS = {"heatmaps": ".png", "inputs": ".png", "relevance": ".npy"}
#: The contact sheet's file name (in ``--out`` itself).
SHEET = "contact_sheet.png"
#: The longest file-name part (bytes) most file systems take.
NAME_MAX = 255


# -- names ---------------------------------------------------------------------------------------
def check_format(fmt: str) -> None:
    """Check that ``fmt`` uses only the plain fields of :data:`NAME_FIELDS` (with format specs)."""
    fields = ", ".join(NAME_FIELDS)
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as exc:
        raise OutputError(f"--name-format {fmt!r}: {exc} (fields: {fields}; write {{{{ and }}}} for braces)") from None
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        if field == "" or field.isdigit():
            raise OutputError(f"--name-format {fmt!r}: every field needs a name (fields: {fields})")
        if field not in NAME_FIELDS:
            base = field.split(".")[0].split("[")[0]
            if base in NAME_FIELDS:
                raise OutputError(
                    f"--name-format {fmt!r}: field {{{field}}} looks up part of {{{base}}}; use the fields as they "
                    f"are, with a format spec if needed (e.g. {{sample:05d}})"
                )
            raise OutputError(f"--name-format {fmt!r}: unknown field {{{field}}} (fields: {fields})")
        if spec and "{" in spec:
            raise OutputError(f"--name-format {fmt!r}: fields inside a format spec are not supported")
    try:
        fmt.format(sample=0, stem="stem", label="label", pred="pred")
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise OutputError(f"--name-format {fmt!r}: {exc} (fields: {fields})") from None


def uses_pred(fmt: str) -> bool:
    """Whether ``fmt`` (checked by :func:`check_format`) uses ``{pred}``."""
    return "pred" in {field for _, field, _, _ in string.Formatter().parse(fmt) if field}


def name_problem(name: str) -> str | None:
    """Say why ``name`` cannot be a file name (without extension) inside a kind's folder, or None."""
    if not name:
        return "an empty name"
    if "\0" in name:
        return "a NUL character"
    if name.startswith("/"):
        return "a leading '/' (names are paths inside --out)"
    if name.endswith("/"):
        return "no file name after the last '/' (a name must end in a file name)"
    parts = name.split("/")
    if "" in parts:
        return "an empty folder name ('//')"
    if any(part in (".", "..") for part in parts):
        return "a '.' or '..' part (names stay inside --out)"
    longest = max(parts, key=lambda part: len(part.encode()))
    if len(longest.encode()) + 4 > NAME_MAX:
        return f"a part of {len(longest.encode())} bytes (at most {NAME_MAX - 4}, for the extension)"
    return None


def _format(fmt: str, index: int, sample: Any, pred: str) -> str:
    try:
        return fmt.format(sample=index, stem=sample.path.stem, label=sample.label_name or "", pred=pred)
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise OutputError(f"--name-format {fmt!r}: {exc} for input '{sample.path}'") from None


def format_name(fmt: str, index: int, sample: Any, pred_name: str = "") -> str:
    """Return the name (relative path without extension) of input number ``index``."""
    return _format(fmt, index, sample, pred_name)


def plan_names(fmt: str, samples: Sequence[Any], classes: Sequence[str] | None) -> dict[int, str]:
    """Return ``{index: name}`` with ``{pred}`` standing for one class; raise :class:`OutputError` for bad names.

    Every name must pass :func:`name_problem`, and no two inputs may share a name when they get
    the same prediction. With ``{pred}``, every class name must make a valid name too.
    """
    check_format(fmt)
    with_pred = uses_pred(fmt)
    pred = classes[0] if classes else "0"
    names: dict[int, str] = {}
    seen: dict[str, Any] = {}
    for index, sample in enumerate(samples):
        name = _format(fmt, index, sample, pred)
        problem = name_problem(name)
        if problem is not None:
            empty = " ({label} is empty: the input has no label)" if "{label" in fmt and sample.label is None else ""
            raise OutputError(
                f"--name-format {fmt!r} gives '{name}' for input '{sample.path}', which has {problem}{empty}"
            )
        if name in seen:
            when = " when both get the same prediction" if with_pred else ""
            raise OutputError(
                f"--name-format {fmt!r} gives '{seen[name].path}' and '{sample.path}' the same name '{name}'{when}; "
                "add {sample} to it"
            )
        seen[name] = sample
        names[index] = name
    if with_pred and classes and samples:
        for number, class_name in enumerate(classes):
            name = _format(fmt, 0, samples[0], class_name)
            problem = name_problem(name)
            if problem is not None or "/" in class_name:
                problem = problem or "a '/' from the class name"
                raise OutputError(
                    f"--name-format {fmt!r} uses {{pred}}, and class {number} ('{class_name}') gives the name "
                    f"'{name}', which has {problem}; leave {{pred}} out of --name-format or rename the class"
                )
    return names


def files_of(name: str, kinds: Iterable[str]) -> list[str]:
    """Return the paths (relative to ``--out``) of one input's files."""
    return [f"{kind}/{name}{KINDS[kind]}" for kind in kinds]


def check_paths(paths: Sequence[str]) -> None:
    """Raise :class:`OutputError` if two paths are equal or one's folder is another's file."""
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise OutputError(f"two files of this run would be written to '{path}'; change --name-format")
        seen.add(path)
    for path in paths:
        parent = os.path.dirname(path)
        while parent:
            if parent in seen:
                raise OutputError(f"'{parent}' would be both a file and a folder of this run; change --name-format")
            parent = os.path.dirname(parent)


# -- the folder ----------------------------------------------------------------------------------
def _what(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a file"
    return "not a folder"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class OutputFolder:
    """``--out``: checked before the run, then written file by file (see the module docstring).

    Parameters
    ----------
    root : Path
        The folder.
    overwrite : bool
        Whether files of the same name may be replaced.
    """

    def __init__(self, root: Path, overwrite: bool) -> None:
        self.root = Path(root)
        self.overwrite = overwrite
        self.existed = False
        self.before: set[str] = set()
        self.written: list[str] = []
        self.written_indices: list[int] = []
        self.replaced = 0
        self._written: set[str] = set()
        self._fd: int | None = None

    # checks before the run
    def check(self, probe: bool = True) -> None:
        """Check that the folder can take this run's files; with ``probe``, try creating a file there.

        Raises
        ------
        OutputError
            If ``--out`` is a file, not empty (without ``overwrite``), or cannot be created or written.
        """
        out = self.root
        try:
            info = os.stat(out)
        except (FileNotFoundError, NotADirectoryError):
            info = None
        except OSError as exc:
            raise OutputError(f"--out '{out}': {_reason(exc)}") from None
        if info is None:
            self._check_creatable(probe)
            return
        if not stat.S_ISDIR(info.st_mode):
            raise OutputError(f"--out '{out}' is {_what(info.st_mode)}, not a folder; give a folder (it is created "
                              "if missing)")
        self.existed = True
        try:
            entries = sorted(os.listdir(out))
        except OSError as exc:
            raise OutputError(f"--out '{out}': cannot list this folder ({_reason(exc)})") from None
        if entries and not self.overwrite:
            raise OutputError(
                f"--out '{out}' is not empty ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, e.g. "
                f"'{entries[0]}'); choose a new folder, or give --overwrite to replace the files of this run's names "
                "there (nothing else is changed)"
            )
        if probe:
            self._probe()
        if self.overwrite:
            self.before = set(_files_below(out))

    def _check_creatable(self, probe: bool) -> None:
        out = self.root
        missing = [out]
        parent = out.parent
        while True:
            try:
                info = os.stat(parent)
            except (FileNotFoundError, NotADirectoryError):
                missing.append(parent)
                parent = parent.parent
                continue
            except OSError as exc:
                raise OutputError(f"--out '{out}': cannot use '{parent}' ({_reason(exc)})") from None
            break
        if not stat.S_ISDIR(info.st_mode):
            raise OutputError(f"--out '{out}': '{parent}' is {_what(info.st_mode)}, not a folder")
        if not probe:
            return
        made = []
        try:
            for folder in reversed(missing):
                os.mkdir(folder)
                made.append(folder)
            self._probe()
        except OSError as exc:
            raise OutputError(f"--out '{out}': cannot create this folder ({_reason(exc)})") from None
        finally:
            for folder in reversed(made):
                try:
                    os.rmdir(folder)
                except OSError:
                    pass

    def _probe(self) -> None:
        name = os.path.join(self.root, f".zplug-probe-{secrets.token_hex(6)}")
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise OutputError(f"--out '{self.root}': cannot write in this folder ({_reason(exc)})") from None
        os.close(fd)
        os.unlink(name)

    def check_targets(self, paths: Sequence[str]) -> None:
        """With files already in the folder: refuse folders at file places and links or files at folder places."""
        if not self.existed:
            return
        checked: dict[str, bool] = {}
        for path in paths:
            parts = path.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder in checked:
                    if not checked[folder]:
                        break
                    continue
                mode = self._lstat(folder)
                checked[folder] = mode is not None
                if mode is None:
                    break
                if not stat.S_ISDIR(mode):
                    raise OutputError(
                        f"'{self.root / folder}' is {_what(mode)}, not a folder; zplug writes no files through links "
                        "or in place of files: remove it or choose another --out"
                    )
            mode = self._lstat(path)
            if mode is not None and stat.S_ISDIR(mode):
                raise OutputError(
                    f"'{self.root / path}' is a folder, where this run writes a file; remove it or change --name-format"
                )

    def _lstat(self, relative: str) -> int | None:
        try:
            return os.lstat(self.root / relative).st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OutputError(f"cannot check '{self.root / relative}': {_reason(exc)}") from None

    # writing
    def open(self) -> None:
        """Create the folder (if missing) and hold it open for writing."""
        if self._fd is not None:
            return
        try:
            os.makedirs(self.root, exist_ok=True)
            self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise OutputError(f"cannot create --out '{self.root}': {_reason(exc)}") from None

    def close(self) -> None:
        """Release the folder."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _folder_fd(self, parts: list[str]) -> int:
        """Open the folder ``parts`` below the root (creating it), refusing links: return its descriptor."""
        assert self._fd is not None
        fd = os.dup(self._fd)
        try:
            for depth, part in enumerate(parts):
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        where = self.root.joinpath(*parts[: depth + 1])
                        raise OutputError(
                            f"'{where}' is a link or a file, not a folder; zplug writes no files through links: "
                            "remove it or choose another --out"
                        ) from None
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def write(self, relative: str, save: Callable[[IO[bytes]], None]) -> None:
        """Write the file ``relative`` (a path inside the folder) through ``save(binary_file)``, atomically.

        Raises
        ------
        OutputError
            If the run already wrote this path, the place is taken (without ``overwrite``), a
            folder on the way is a link or a file, or the system refuses the write.
        """
        if relative in self._written:
            raise OutputError(
                f"this run already wrote '{self.root / relative}'; two inputs got the same name: add {{sample}} to "
                "--name-format"
            )
        self.open()
        *folders, name = relative.split("/")
        temp = f".zplug-{secrets.token_hex(6)}.tmp"
        fd = None
        try:
            fd = self._folder_fd(folders)
            file_fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                              dir_fd=fd)
            with os.fdopen(file_fd, "wb") as file:
                save(file)
            self._publish(fd, temp, name, relative)
            temp = None
        except OSError as exc:
            raise OutputError(f"cannot write '{self.root / relative}': {_reason(exc)}") from None
        finally:
            if fd is not None:
                if temp is not None:
                    try:
                        os.unlink(temp, dir_fd=fd)
                    except OSError:
                        pass
                os.close(fd)
        self._written.add(relative)
        self.written.append(relative)

    def _publish(self, fd: int, temp: str, name: str, relative: str) -> None:
        """Move ``temp`` to ``name`` in folder ``fd``: never over an existing entry unless ``overwrite``."""
        if self.overwrite:
            try:
                existing = os.lstat(name, dir_fd=fd)
            except FileNotFoundError:
                existing = None
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                raise OutputError(f"'{self.root / relative}' is a folder, where this run writes a file")
            os.replace(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
            self.replaced += existing is not None
            return
        try:
            os.link(temp, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
        except FileExistsError:
            raise OutputError(
                f"'{self.root / relative}' appeared while this run was writing; it was left as it is (give "
                "--overwrite to replace it)"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            # a file system without hard links: check, then rename (a short race instead of none)
            try:
                os.lstat(name, dir_fd=fd)
            except FileNotFoundError:
                os.rename(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
                return
            raise OutputError(
                f"'{self.root / relative}' appeared while this run was writing; it was left as it is (give "
                "--overwrite to replace it)"
            ) from None
        os.unlink(temp, dir_fd=fd)


def _files_below(root: Path) -> list[str]:
    """Every non-folder entry below ``root`` (links not followed), as paths relative to it."""
    found = []
    for folder, folders, files in os.walk(root):
        relative = os.path.relpath(folder, root)
        for name in files:
            found.append(name if relative == "." else f"{relative}/{name}")
        for name in folders:
            if os.path.islink(os.path.join(folder, name)):
                found.append(name if relative == "." else f"{relative}/{name}")
    return found


def describe_written(out: Path, count: int, indices: Sequence[int]) -> str:
    """Say what was written before an error, e.g. ``24 files were written under 'out' (inputs 0-11) ...``."""
    if not count:
        return f"no file was written under '{out}'"
    return (
        f"{count} file{'s were' if count != 1 else ' was'} written under '{out}' before it (complete files"
        f"{', of inputs ' + ranges(indices) if indices else ''})"
    )


def ranges(indices: Iterable[int]) -> str:
    """Format sorted integers as ranges, e.g. ``0-4, 10-11``."""
    values = sorted(set(indices))
    parts = []
    start = previous = None
    for value in values:
        if previous is not None and value == previous + 1:
            previous = value
            continue
        if start is not None:
            parts.append(f"{start}-{previous}" if previous != start else str(start))
        start = previous = value
    if start is not None:
        parts.append(f"{start}-{previous}" if previous != start else str(start))
    return ", ".join(parts)


__all__ = (
    "KINDS",
    "NAME_FIELDS",
    "SHEET",
    "OutputError",
    "OutputFolder",
    "check_format",
    "check_paths",
    "describe_written",
    "files_of",
    "format_name",
    "name_problem",
    "plan_names",
    "ranges",
    "uses_pred",
)
