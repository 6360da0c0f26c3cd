"""Which image files a list of command-line paths names, and their ImageFolder labels.

A path is read as follows (``layout="auto"``):

* a file: one unlabelled input, whatever its name (it must be a regular file: devices, pipes
  and sockets are refused without being read);
* a folder whose sub-folders hold images and that holds no images itself: an ImageFolder tree.
  Each sub-folder is a class, and every image below it, at any depth, is labelled with it (as
  torchvision's ``ImageFolder``); sub-folders without images keep their place in the class order;
* a folder that holds images and no sub-folder with images: a plain folder, unlabelled;
* a folder that holds images *and* sub-folders with images is ambiguous and refused: choose
  ``layout="imagefolder"`` (images directly in the folder are then skipped and counted) or
  ``layout="flat"`` (every image below the folder, at any depth, unlabelled).

Inside folders only files with an image extension (:data:`IMAGE_EXTENSIONS`) are taken; hidden
entries (names starting with ``.``, such as macOS's ``._name.png`` AppleDouble files) and
``__MACOSX`` folders are skipped. Everything skipped is counted (:class:`Skipped`), so that the
summary can say so. Files are taken in torchvision's order: folder by folder, sorted by path,
and sorted by name inside each folder. Links to folders are followed once (a link back to a
folder already visited is not entered again).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from zplug.errors import InputError

#: File extensions (lower case) taken from folders; files named explicitly are tried whatever their name.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
#: How a folder is read: decided per folder (auto), always as an ImageFolder tree, or always as plain images.
LAYOUTS: tuple[str, ...] = ("auto", "imagefolder", "flat")
#: Folder names skipped like hidden ones (zip archives made on macOS hold their AppleDouble files there).
SKIPPED_FOLDERS: frozenset[str] = frozenset({"__MACOSX"})


@attrs.frozen(kw_only=True)
class Sample:
    """One input image.

    Attributes
    ----------
    path : Path
        The image file.
    label : int or None
        The class index (ImageFolder trees only).
    label_name : str or None
        The class (the sub-folder's name).
    """

    path: Path
    label: int | None = None
    label_name: str | None = None


@attrs.define
class Skipped:
    """What discovery left out, by reason (counts, and the first path of each kind)."""

    hidden: int = 0
    other: int = 0
    outside_classes: int = 0
    examples: dict[str, str] = attrs.field(factory=dict)

    def add(self, kind: str, path: Path) -> None:
        """Count one ``path`` skipped for reason ``kind`` (``hidden``, ``other`` or ``outside_classes``)."""
        setattr(self, kind, getattr(self, kind) + 1)
        self.examples.setdefault(kind, str(path))

    def describe(self) -> str | None:
        """Return e.g. ``2 hidden entries (names starting with '.'), 1 file with another extension``, or None."""
        parts = []
        if self.hidden:
            parts.append(f"{_count(self.hidden, 'hidden entry', 'hidden entries')} (names starting with '.', "
                         f"e.g. '{self.examples['hidden']}')")
        if self.other:
            parts.append(f"{_count(self.other, 'file')} without an image extension (e.g. '{self.examples['other']}')")
        if self.outside_classes:
            parts.append(f"{_count(self.outside_classes, 'image')} outside the class folders of an ImageFolder tree "
                         f"(e.g. '{self.examples['outside_classes']}')")
        return ", ".join(parts) or None


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


@attrs.frozen(kw_only=True)
class Tree:
    """An ImageFolder tree: its class folders (sorted) and the images below each, in order."""

    root: Path
    images: dict[str, list[Path]]


@attrs.frozen(kw_only=True)
class Found:
    """The inputs of one command-line path: plain images, or an ImageFolder tree."""

    files: list[Path] = attrs.field(factory=list)
    tree: Tree | None = None


@attrs.frozen(kw_only=True)
class Discovery:
    """All inputs found, before labels are assigned (see :meth:`samples`)."""

    found: list[Found]
    skipped: Skipped

    def samples(self, class_names: Sequence[str] | None = None) -> list[Sample]:
        """Return the samples in order; trees are labelled by :func:`class_indices` with ``class_names``."""
        samples: list[Sample] = []
        for entry in self.found:
            if entry.tree is None:
                samples.extend(Sample(path=p) for p in entry.files)
                continue
            indices, _ = class_indices(list(entry.tree.images), class_names)
            for name in sorted(entry.tree.images, key=lambda n: (indices[n], n)):
                samples.extend(Sample(path=p, label=indices[name], label_name=name) for p in entry.tree.images[name])
        return samples

    def label_source(self, class_names: Sequence[str] | None = None) -> str | None:
        """Return how tree labels are decided (``class names``, ``sorted folders``), or None without trees."""
        sources = set()
        for entry in self.found:
            if entry.tree is not None:
                folders = [name for name, images in entry.tree.images.items() if images]
                sources.add(class_indices(folders, class_names)[1])
        return ", ".join(sorted(sources)) or None

    def folder_names(self) -> list[str]:
        """Return the class-folder names of every tree (in order, repeated names once)."""
        names: dict[str, None] = {}
        for entry in self.found:
            if entry.tree is not None:
                names.update(dict.fromkeys(entry.tree.images))
        return list(names)


def class_indices(folders: Sequence[str], class_names: Sequence[str] | None = None) -> tuple[dict[str, int], str]:
    """Map ImageFolder class folders to class indices.

    Parameters
    ----------
    folders : sequence of str
        The sub-folder names.
    class_names : sequence of str or None
        The model's class names, in output order, if known.

    Returns
    -------
    dict, str
        ``{folder: index}``, and how it was decided: ``"class names"`` when every folder is one
        of ``class_names`` (the index is its position there), else ``"sorted folders"`` (the
        position in the sorted folder list, as torchvision's ``ImageFolder``).
    """
    if class_names is not None and all(name in class_names for name in folders):
        positions = {name: index for index, name in enumerate(class_names)}
        return {name: positions[name] for name in folders}, "class names"
    return {name: index for index, name in enumerate(sorted(folders))}, "sorted folders"


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED_FOLDERS


def file_kind(mode: int) -> str:
    """Name a non-regular file type, e.g. ``a character device``."""
    kinds = (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((text for test, text in kinds if test(mode)), "not a regular file")


class _Walker:
    """Lists folders once each (links to folders are followed, loops are not)."""

    def __init__(self, skipped: Skipped) -> None:
        self.skipped = skipped
        self.seen: set[tuple[int, int]] = set()

    def entries(self, folder: Path) -> tuple[list[Path], list[Path]]:
        """Return ``(image files, sub-folders)`` of ``folder``, sorted by name; count what is skipped."""
        images, folders = [], []
        try:
            listing = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise InputError(f"cannot list folder '{folder}': {exc.strerror or exc}") from None
        for entry in listing:
            path = Path(folder, entry.name)
            if _hidden(entry.name):
                self.skipped.add("hidden", path)
                continue
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                folders.append(path)
            elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                images.append(path)  # not necessarily a regular file: checked (and reported) when it is read
            else:
                self.skipped.add("other", path)
        return images, folders

    def enter(self, folder: Path) -> bool:
        """Whether ``folder`` was not listed before (marks it as listed)."""
        try:
            info = os.stat(folder)
        except OSError:
            return False
        key = (info.st_dev, info.st_ino)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    def walk(self, folder: Path) -> Iterator[tuple[Path, list[Path]]]:
        """Yield ``(folder, its images)`` for ``folder`` and every folder below it (not yet seen)."""
        if not self.enter(folder):
            return
        images, folders = self.entries(folder)
        yield folder, images
        for sub in folders:
            yield from self.walk(sub)

    def images_below(self, folder: Path) -> list[Path]:
        """Every image below ``folder``, in torchvision's order (folders sorted by path, then names)."""
        listed = sorted(self.walk(folder), key=lambda item: str(item[0]))
        return [image for _, images in listed for image in images]


def discover(paths: Sequence[str | os.PathLike], layout: str = "auto") -> Discovery:
    """Find the input images that ``paths`` name (see the module docstring).

    Raises
    ------
    InputError
        For a path that does not exist or is no file or folder, a folder without images, or a
        folder that mixes images and class folders under ``layout="auto"``.
    """
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    skipped = Skipped()
    found = []
    for raw in paths:
        path = Path(raw)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise InputError(f"input '{raw}' does not exist") from None
        except OSError as exc:
            raise InputError(f"cannot access input '{raw}': {exc.strerror or exc}") from None
        if stat.S_ISREG(info.st_mode):
            found.append(Found(files=[path]))
        elif stat.S_ISDIR(info.st_mode):
            found.append(_folder(raw, path, layout, skipped))
        else:
            raise InputError(f"input '{raw}' is {file_kind(info.st_mode)}, not an image file or a folder")
    return Discovery(found=found, skipped=skipped)


def _folder(raw: str | os.PathLike, path: Path, layout: str, skipped: Skipped) -> Found:
    walker = _Walker(skipped)
    if layout == "flat":
        files = walker.images_below(path)
        if not files:
            raise _no_images(raw)
        return Found(files=files)
    walker.enter(path)
    top, folders = walker.entries(path)
    classes = {folder.name: walker.images_below(folder) for folder in folders}
    if layout == "auto":
        if not any(classes.values()):
            if not top:
                raise _no_images(raw)
            return Found(files=top)
        if top:
            with_images = next(folder for folder in folders if classes[folder.name])
            raise InputError(
                f"folder '{raw}' holds images ('{top[0]}'{f' and {len(top) - 1} more' if len(top) > 1 else ''}) "
                f"and sub-folders with images ('{with_images}'): give --layout imagefolder to read the sub-folders "
                "as classes (skipping the images beside them) or --layout flat to read every image, unlabelled"
            )
    elif not any(classes.values()):
        raise InputError(f"folder '{raw}' has no sub-folder with images, so it is no ImageFolder tree (--layout "
                         "imagefolder); use --layout auto or flat for a folder of images")
    for image in top:
        skipped.add("outside_classes", image)
    return Found(tree=Tree(root=path, images=classes))


def _no_images(raw: str | os.PathLike) -> InputError:
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    return InputError(f"folder '{raw}' holds no images (looked for {extensions}, and in its sub-folders)")


__all__ = (
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "SKIPPED_FOLDERS",
    "Discovery",
    "Found",
    "InputError",
    "Sample",
    "Skipped",
    "Tree",
    "class_indices",
    "discover",
    "file_kind",
)
