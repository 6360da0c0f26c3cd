"""Image inputs for ``zplug explain``: which files, and how one becomes a model input.

:mod:`zplug.discovery` turns command-line paths into :class:`Sample` records (path and, for
ImageFolder trees, the label); :mod:`zplug.imagefile` reads one file safely (limits, every Pillow
mode to [0, 1]); :class:`Preprocess` turns it into an array (resize the short side, centre-crop,
scale to [0, 1], normalise with a mean and std). Only Pillow and torch are used, so no
torchvision is needed; Pillow's bilinear resize is what torchvision's ``Resize`` does on Pillow
images. :func:`collect_inputs` and :func:`label_source` are kept for callers of earlier versions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import attrs
import numpy as np

from zplug.discovery import IMAGE_EXTENSIONS, InputError, Sample, class_indices, discover
from zplug.errors import SpecError
from zplug.imagefile import Limits, read_image, to_array


def collect_inputs(paths: Sequence[str | os.PathLike], class_names: Sequence[str] | None = None) -> list[Sample]:
    """Return the samples that ``paths`` name (see :mod:`zplug.discovery`), in order.

    Raises
    ------
    InputError
        For a path that does not exist, or a folder without images.
    """
    return discover(paths).samples(class_names)


def label_source(paths: Sequence[str | os.PathLike], class_names: Sequence[str] | None = None) -> str | None:
    """Return how the labels of ``paths`` were decided (see :func:`class_indices`), or ``None`` without trees."""
    return discover(paths).label_source(class_names)


def _size_or_none(name: str):
    def check(instance, attribute, value) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise SpecError(f"{name} must be a number of pixels (an integer, 0 or None: off), not {value!r}")

    return check


@attrs.frozen(kw_only=True)
class Preprocess:
    """How an image file becomes a model input.

    Attributes
    ----------
    resize : int or None
        Resize so that the shorter side has this many pixels (bilinear); ``None`` or 0: keep the size.
    crop : int or None
        Centre-crop a square of this size; ``None`` or 0: no crop.
    mean, std : tuple of float or None
        Per-channel normalisation ``(x - mean) / std`` of the [0, 1] image; ``None``: none.
    """

    resize: int | None = attrs.field(default=None, validator=_size_or_none("resize"))
    crop: int | None = attrs.field(default=None, validator=_size_or_none("crop"))
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """Return the size after resizing a ``width x height`` image (the long side as torchvision computes it)."""
        if not self.resize:
            return width, height
        if width < height:
            return self.resize, max(int(self.resize * height / width), 1)
        if height < width:
            return max(int(self.resize * width / height), 1), self.resize
        return self.resize, self.resize

    def output_shape(self, path: str | os.PathLike, width: int, height: int, limits: Limits) -> tuple[int, int, int]:
        """Return ``(3, H, W)`` of the input made from a ``width x height`` image ``path``.

        Raises
        ------
        InputError
            If the resized image is over ``limits.max_pixels``, or smaller than the crop.
        """
        size = self.resized_size(width, height)
        if size != (width, height):
            limits.check_pixels(*size, f"image '{path}' ({width}x{height}) resized to a shorter side of {self.resize}",
                                "lower --resize or raise --max-pixels")
        if self.crop:
            if size[0] < self.crop or size[1] < self.crop:
                raise InputError(
                    f"image '{path}' is {size[0]}x{size[1]}{' after resizing' if size != (width, height) else ''}, "
                    f"smaller than the crop {self.crop}x{self.crop}; resize it (--resize) or crop less (--crop)"
                )
            size = (self.crop, self.crop)
        return 3, size[1], size[0]

    def check(self, path: str | os.PathLike, limits: Limits | None = None) -> tuple[int, int, int]:
        """Decode ``path`` (see :func:`zplug.imagefile.read_image`) and return the shape :meth:`load` gives.

        Raises
        ------
        InputError
            As :meth:`load`.
        """
        limits = limits or Limits()
        image = read_image(path, limits)
        return self.output_shape(path, *image.size, limits)

    def load(self, path: str | os.PathLike, limits: Limits | None = None) -> np.ndarray:
        """Read ``path``, resize and crop; return float32 ``(3, H, W)`` in [0, 1] (before normalising).

        8-bit images are resized as RGB (as torchvision does); 16-bit and floating-point ones
        in Pillow's float mode, so no value is clipped (see :mod:`zplug.imagefile`).

        Raises
        ------
        InputError
            If the file cannot be read (see :func:`zplug.imagefile.read_image`), is too large
            before or after resizing, or is smaller than the crop.
        """
        from PIL import Image

        limits = limits or Limits()
        image = read_image(path, limits)
        self.output_shape(path, *image.size, limits)
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        if self.crop:
            left = int(round((size[0] - self.crop) / 2.0))
            top = int(round((size[1] - self.crop) / 2.0))
            image = image.crop((left, top, left + self.crop, top + self.crop))
        return to_array(image)

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


def load_batch(samples: Sequence[Sample], preprocess: Preprocess, limits: Limits | None = None) -> np.ndarray:
    """Load ``samples`` into one float32 array ``(N, 3, H, W)`` in [0, 1].

    Raises
    ------
    InputError
        If an image cannot be read, or the images differ in size.
    """
    arrays = [preprocess.load(sample.path, limits) for sample in samples]
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
    "Limits",
    "Preprocess",
    "Sample",
    "class_indices",
    "collect_inputs",
    "label_source",
    "load_batch",
)
