"""Reading one image file safely: file checks, size limits, and every Pillow mode to values in [0, 1].

Before any pixel is decoded, a file must be a regular file (devices, pipes and sockets are refused
without reading them), at most :attr:`Limits.max_bytes` long, in one of :data:`FORMATS` (formats
that run external programs, such as EPS, are never opened), and at most :attr:`Limits.max_pixels`
pixels large according to its header. Pillow's own decompression-bomb check is replaced by this
limit while the file is opened.

:func:`read_image` returns an ``RGB`` image for 8-bit modes and an ``F`` image (one channel, values
in [0, 1]) for high bit depths, so that nothing is clipped:

==========================  =================================================================
mode                        values
==========================  =================================================================
``1``                       black 0, white 1
``L P RGB CMYK YCbCr ...``  Pillow's conversion to RGB (alpha is dropped), divided by 255
``I;16`` (16-bit grey)      divided by 65535
``I`` (32-bit integer)      divided by 65535 (Pillow reads 16-bit PNG, PGM and TIFF files so);
                            values outside 0..65535 are an error
``F`` (32-bit float)        as they are; values outside [0, 1] or not finite are an error
==========================  =================================================================
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import attrs

from zplug.discovery import InputError, file_kind

if TYPE_CHECKING:
    import numpy as np

#: Pillow formats that are read (by their Pillow names); others are refused before decoding.
FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
#: How :data:`FORMATS` are named in messages.
FORMAT_NAMES = "a PNG, JPEG, BMP, GIF, WebP, TIFF or PPM/PGM/PBM image"
#: The default limit on an image's pixels (width times height), before and after resizing.
DEFAULT_MAX_PIXELS = 50_000_000
#: Bytes a file may have per allowed pixel (four 32-bit channels), plus :data:`HEADER_BYTES`.
BYTES_PER_PIXEL = 16
HEADER_BYTES = 16 * 2**20

_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                              "LAB", "HSV"})


@attrs.frozen
class Limits:
    """How large an input may be.

    Attributes
    ----------
    max_pixels : int
        The most pixels (width times height) of an image file, and of an image after resizing.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def max_bytes(self) -> int:
        """The longest file read: :data:`BYTES_PER_PIXEL` per allowed pixel plus :data:`HEADER_BYTES`."""
        return BYTES_PER_PIXEL * self.max_pixels + HEADER_BYTES

    def check_pixels(self, width: int, height: int, what: str, fix: str) -> None:
        """Raise :class:`InputError` if ``width x height`` is over :attr:`max_pixels`."""
        if width * height > self.max_pixels:
            raise InputError(
                f"{what} is {width}x{height} ({megapixels(width * height)} megapixels), over the limit of "
                f"{megapixels(self.max_pixels)} megapixels; {fix}"
            )


def megapixels(pixels: int) -> str:
    """Format a pixel count in megapixels, e.g. ``0.25``, ``400`` or ``98,000``."""
    value = pixels / 1e6
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


def _size(n_bytes: int) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= factor:
            return f"{n_bytes / factor:.3g} {unit}"
    return f"{n_bytes} bytes"


def check_file(path: str | os.PathLike, limits: Limits) -> None:
    """Raise :class:`InputError` unless ``path`` is a regular file of at most ``limits.max_bytes`` bytes."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"input '{path}' does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot access input '{path}': {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"input '{path}' is {file_kind(info.st_mode)}, not an image file")
    if info.st_size == 0:
        raise InputError(f"cannot read image '{path}': the file is empty")
    if info.st_size > limits.max_bytes:
        raise InputError(
            f"input '{path}' is {_size(info.st_size)}, over the limit of {_size(limits.max_bytes)} for images of at "
            f"most {megapixels(limits.max_pixels)} megapixels; raise --max-pixels to read it"
        )


@contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """Switch off Pillow's decompression-bomb check (:class:`Limits` checks the size instead)."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_image(path: str | os.PathLike, limits: Limits | None = None):
    """Read the first frame of ``path`` as a loaded ``RGB`` or ``F`` image (see the module docstring).

    Raises
    ------
    InputError
        If the file is not a regular file, too long, not in :data:`FORMATS`, too many pixels,
        damaged, or holds values that do not map to [0, 1].
    """
    from PIL import Image, UnidentifiedImageError

    limits = limits or Limits()
    check_file(path, limits)
    try:
        with _own_pixel_limit(), Image.open(path, formats=FORMATS) as image:
            limits.check_pixels(*image.size, f"image '{path}'", "raise --max-pixels to read it")
            image.load()
            return _to_unit(image, path)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"cannot read image '{path}': not {FORMAT_NAMES}") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, EOFError, ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"cannot read image '{path}': the file is damaged or truncated ({reason})") from None


def _to_unit(image, path: str | os.PathLike):
    """Return ``image`` as ``RGB`` (8 bits) or ``F`` with values in [0, 1] (see the module docstring)."""
    import numpy as np
    from PIL import Image

    mode = image.mode
    if mode in _EIGHT_BIT_MODES:
        if mode == "La":  # premultiplied alpha: Pillow converts it to RGB only through LA
            image = image.convert("LA")
        return image.convert("RGB")
    array = np.asarray(image)
    if mode.startswith("I;16"):
        values = array.astype(np.float32) / np.float32(65535)
    elif mode == "I":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise InputError(
                f"image '{path}' (mode I, 32-bit integers) has values from {low} to {high}; zplug reads integer "
                "images as 16-bit values (0 to 65535): save it with 8 or 16 bits per channel"
            )
        values = array.astype(np.float32) / np.float32(65535)
    elif mode == "F":
        values = array.astype(np.float32)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            finite = values[np.isfinite(values)]
            span = f"from {finite.min():g} to {finite.max():g}" if finite.size else "no finite values"
            extra = " and values that are not finite" if finite.size < values.size and finite.size else ""
            raise InputError(
                f"image '{path}' (mode F, 32-bit floats) has values {span}{extra}; zplug reads floating-point "
                "images as values in [0, 1]: scale it to [0, 1]"
            )
    else:
        raise InputError(f"cannot read image '{path}': Pillow mode '{mode}' has no conversion to RGB")
    return Image.fromarray(np.ascontiguousarray(values))  # float32: mode F


def to_array(image) -> np.ndarray:
    """Return an ``RGB`` or ``F`` image from :func:`read_image` as float32 ``(3, H, W)`` in [0, 1]."""
    import numpy as np

    if image.mode == "F":
        plane = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
        return np.repeat(plane[None], 3, axis=0)
    return (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()


__all__ = (
    "BYTES_PER_PIXEL",
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "FORMAT_NAMES",
    "HEADER_BYTES",
    "Limits",
    "check_file",
    "megapixels",
    "read_image",
    "to_array",
)
