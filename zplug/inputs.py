"""Image inputs for ``zplug explain``: files, folders and ImageFolder trees, and their preprocessing.

:func:`collect_inputs` turns command-line paths into a list of :class:`Sample` records (path and,
for ImageFolder trees, the label); :class:`Preprocess` turns one image file into a tensor (resize
the short side, centre-crop, scale to [0, 1], normalise with a mean and std). Only Pillow and
torch are used, so no torchvision is needed; Pillow's bilinear resize is what torchvision's
``Resize`` does on Pillow images.

A path is read as follows:

* a file: one unlabelled input (any format Pillow reads);
* a folder whose sub-folders hold images: an ImageFolder tree; each sub-folder is a class and
  its images are labelled with it; sub-folders without images keep their place in the order;
* any other folder: its image files (by extension), unlabelled.

Files inside folders are taken in sorted order; folders are not searched any deeper.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np

from zplug.errors import InputError

#: File extensions (lower case) taken from folders; files named explicitly are tried whatever their name.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


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


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


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


def collect_inputs(paths: Sequence[str | os.PathLike], class_names: Sequence[str] | None = None) -> list[Sample]:
    """Return the samples that ``paths`` name (see the module docstring), in order.

    Raises
    ------
    InputError
        For a path that does not exist, or a folder without images.
    """
    samples: list[Sample] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"input '{raw}' does not exist")
        if path.is_file():
            samples.append(Sample(path=path))
            continue
        subfolders = sorted(p for p in path.iterdir() if p.is_dir())
        tree = {folder.name: _images_in(folder) for folder in subfolders}
        if any(tree.values()):
            indices, _ = class_indices(list(tree), class_names)
            for name in sorted(tree, key=lambda n: (indices[n], n)):
                samples.extend(Sample(path=p, label=indices[name], label_name=name) for p in tree[name])
            continue
        files = _images_in(path)
        if not files:
            extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise InputError(f"folder '{raw}' holds no images (looked for {extensions}, and in its sub-folders)")
        samples.extend(Sample(path=p) for p in files)
    return samples


def label_source(paths: Sequence[str | os.PathLike], class_names: Sequence[str] | None = None) -> str | None:
    """Return how the labels of ``paths`` were decided (see :func:`class_indices`), or ``None`` without trees."""
    sources = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            folders = [p.name for p in path.iterdir() if p.is_dir() and _images_in(p)]
            if folders:
                sources.add(class_indices(folders, class_names)[1])
    return ", ".join(sorted(sources)) or None


@attrs.frozen(kw_only=True)
class Preprocess:
    """How an image file becomes a model input.

    Attributes
    ----------
    resize : int or None
        Resize so that the shorter side has this many pixels (bilinear); ``None``: keep the size.
    crop : int or None
        Centre-crop a square of this size; ``None``: no crop.
    mean, std : tuple of float or None
        Per-channel normalisation ``(x - mean) / std`` of the [0, 1] image; ``None``: none.
    """

    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """Read ``path`` as RGB, resize and crop; return float32 ``(3, H, W)`` in [0, 1] (before normalising).

        Raises
        ------
        InputError
            If the file is not an image Pillow can read, or is smaller than the crop.
        """
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except FileNotFoundError:
            raise InputError(f"input '{path}' does not exist") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            reason = "not an image Pillow can read" if isinstance(exc, UnidentifiedImageError) else str(exc)
            raise InputError(f"cannot read image '{path}': {reason}") from None
        if self.resize:
            width, height = image.size  # the long side as torchvision computes it: int(resize * long / short)
            if width < height:
                size = (self.resize, max(int(self.resize * height / width), 1))
            elif height < width:
                size = (max(int(self.resize * width / height), 1), self.resize)
            else:
                size = (self.resize, self.resize)
            if size != image.size:
                image = image.resize(size, Image.Resampling.BILINEAR)
        if self.crop:
            width, height = image.size
            if width < self.crop or height < self.crop:
                raise InputError(
                    f"image '{path}' is {width}x{height}, smaller than the crop {self.crop}x{self.crop}; "
                    "resize it (--resize) or crop less (--crop)"
                )
            left, top = int(round((width - self.crop) / 2.0)), int(round((height - self.crop) / 2.0))
            image = image.crop((left, top, left + self.crop, top + self.crop))
        return (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()

    def normalize(self, images):
        """Apply the mean/std normalisation to a batch ``(N, 3, H, W)`` (a torch tensor)."""
        if self.mean is None or self.std is None:
            return images
        import torch

        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
        return (images - mean) / std

    def bounds(self):
        """Return the z-box bounds ``(low, high)``: the normalised values of 0 and 1.

        Floats ``0.0, 1.0`` without normalisation, else tensors of shape ``(1, 3, 1, 1)``.
        """
        if self.mean is None or self.std is None:
            return 0.0, 1.0
        import torch

        mean = torch.tensor(self.mean).reshape(1, -1, 1, 1)
        std = torch.tensor(self.std).reshape(1, -1, 1, 1)
        return (0 - mean) / std, (1 - mean) / std

    def describe(self) -> str:
        """Return a one-line description, e.g. ``resize 256, crop 224, normalise mean (...) std (...)``."""
        parts = []
        if self.resize:
            parts.append(f"resize {self.resize}")
        if self.crop:
            parts.append(f"crop {self.crop}")
        if self.mean is not None and self.std is not None:
            parts.append(f"normalise mean {_floats(self.mean)} std {_floats(self.std)}")
        return ", ".join(parts) or "none (images as they are, values in [0, 1])"


def _floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def load_batch(samples: Sequence[Sample], preprocess: Preprocess) -> np.ndarray:
    """Load ``samples`` into one float32 array ``(N, 3, H, W)`` in [0, 1].

    Raises
    ------
    InputError
        If an image cannot be read, or the images differ in size.
    """
    arrays = [preprocess.load(sample.path) for sample in samples]
    first = arrays[0].shape
    for sample, array in zip(samples, arrays):
        if array.shape != first:
            raise InputError(
                f"image '{sample.path}' is {array.shape[2]}x{array.shape[1]} but '{samples[0].path}' is "
                f"{first[2]}x{first[1]}; images in a batch need one size: set --resize and --crop, or --batch-size 1"
            )
    return np.stack(arrays)


__all__ = (
    "IMAGE_EXTENSIONS",
    "InputError",
    "Preprocess",
    "Sample",
    "class_indices",
    "collect_inputs",
    "label_source",
    "load_batch",
)
