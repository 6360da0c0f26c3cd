"""Relevance to images: normalisation, palette images, grids, contact sheets, saving.

Works with numpy arrays, torch tensors (detached and moved to the CPU) and anything else
``numpy.asarray`` accepts. Single-channel images become palette images (mode ``P``) coloured
by a colour map (:mod:`zplug.cmap`); 3-channel images become ``RGB``.

Differences from ``zennit.image`` (0.5.1), on purpose:

* palettes are handed to Pillow as flat lists of ints, so palette images work with Pillow 13
  (Zennit's 2-D numpy palettes break saving and ``numpy.asarray(image)`` there);
* a constant array (``vmin == vmax``) gives no division by zero: values equal to the bound
  map to the middle of the colour map (0.5), values below to 0 and above to 1;
* :func:`normalize_relevance` offers the example script's three relevance normalisations as
  a library function (``absolute`` maps all-zero relevance to 0, the others to 0.5).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import IO, Any

from zplug._lazy import lazy_module
from zplug.cmap import ColorMap, get_cmap
from zplug.errors import UnknownNameError, unknown_name_message

# Imported when an image is made: the command line reads this module's constants to build its options.
np = lazy_module("numpy")
Image = lazy_module("PIL.Image")
ImageDraw = lazy_module("PIL.ImageDraw")
ImageFont = lazy_module("PIL.ImageFont")

#: The relevance normalisations of :func:`normalize_relevance`.
RELEVANCE_NORMS: tuple[str, ...] = ("symmetric", "absolute", "unaligned")

Grid = bool | tuple[int, int]


def as_array(obj: Any) -> np.ndarray:
    """Return ``obj`` as a numpy array (torch tensors are detached and copied to the CPU)."""
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):
        obj = obj.detach().cpu().numpy()
    return np.asarray(obj)


def palette(cmap: ColorMap | str = "bwr", level: float = 1.0) -> np.ndarray:
    """Return the (256, 3) uint8 palette of ``cmap`` (a :class:`ColorMap`, a name or source) at ``level``."""
    return get_cmap(cmap).palette(level)


def interval_norm_bounds(array: Any, symmetric: bool = False, dim: int | tuple[int, ...] | None = None):
    """Return the bounds ``(vmin, vmax)`` used to normalise ``array`` (kept dimensions, broadcastable).

    Parameters
    ----------
    array : array_like
        The values.
    symmetric : bool
        If true, the bounds are ``-max|a|`` and ``max|a|`` (so 0 maps to 0.5); else ``min`` and ``max``.
    dim : int or tuple of int or None
        The axes to reduce over; ``None`` reduces over all of them.
    """
    array = as_array(array)
    if symmetric:
        vmax = np.abs(array).max(axis=dim, keepdims=True)
        return -vmax, vmax
    return array.min(axis=dim, keepdims=True), array.max(axis=dim, keepdims=True)


def scale_to_unit(array: Any, vmin: Any, vmax: Any, *, degenerate: float = 0.5) -> np.ndarray:
    """Map ``[vmin, vmax]`` linearly to ``[0, 1]`` and clip, without dividing by zero.

    Where ``vmax <= vmin`` (e.g. a constant array), values below ``vmin`` give 0, values above
    ``vmax`` give 1 and the rest give ``degenerate``. The result is float64.
    """
    array = np.asarray(as_array(array), dtype=np.float64)
    vmin = np.asarray(as_array(vmin), dtype=np.float64)
    vmax = np.asarray(as_array(vmax), dtype=np.float64)
    span = np.broadcast_to(vmax - vmin, array.shape)
    low = np.broadcast_to(vmin, array.shape)
    ok = span > 0
    out = np.where(array < low, 0.0, np.where(array > np.broadcast_to(vmax, array.shape), 1.0, degenerate))
    np.divide(array - low, span, out=out, where=ok)
    return np.clip(out, 0.0, 1.0)


def normalize_relevance(relevance: Any, norm: str = "symmetric", *, channel_axis: int | None = 1) -> np.ndarray:
    """Sum relevance over channels and normalise each sample to [0, 1] (as Zennit's example script).

    Parameters
    ----------
    relevance : array_like
        ``(N, C, H, W)`` (summed over ``channel_axis``), ``(N, H, W)``, or one ``(H, W)`` map.
    norm : str
        ``symmetric``: ``(R + a) / 2a`` with ``a = max|R|``, so 0 maps to 0.5;
        ``absolute``: ``|R| / max|R|``;
        ``unaligned``: ``(R - min R) / (max R - min R)``.
        Maxima and minima are taken per sample. All-zero (or constant) samples give 0.5
        (0 for ``absolute``), without warnings.
    channel_axis : int or None
        The channel axis of a 4-dimensional input; ``None`` means the input has no channels.

    Returns
    -------
    numpy.ndarray
        float64 of shape ``(N, H, W)`` (``(H, W)`` for a single map), values in [0, 1].
    """
    if norm not in RELEVANCE_NORMS:
        raise UnknownNameError(unknown_name_message("relevance normalisation", str(norm), RELEVANCE_NORMS))
    array = np.asarray(as_array(relevance), dtype=np.float64)
    if channel_axis is not None and array.ndim == 4:
        array = array.sum(axis=channel_axis)
    if array.ndim not in (2, 3):
        raise ValueError(f"relevance must have shape (N, C, H, W), (N, H, W) or (H, W), not {array.shape}")
    dims = (-2, -1)
    if norm == "symmetric":
        vmin, vmax = interval_norm_bounds(array, symmetric=True, dim=dims)
        return scale_to_unit(array, vmin, vmax, degenerate=0.5)
    if norm == "absolute":
        magnitude = np.abs(array)
        return scale_to_unit(
            magnitude, np.zeros_like(magnitude[..., :1, :1]), magnitude.max(axis=dims, keepdims=True), degenerate=0.0
        )
    vmin, vmax = interval_norm_bounds(array, symmetric=False, dim=dims)
    return scale_to_unit(array, vmin, vmax, degenerate=0.5)


def _channels_last(array: np.ndarray, batched: bool) -> np.ndarray:
    """Move a colour axis of size 1 or 3 to the end (channels-last wins when both fit)."""
    first, last = (1, 3) if batched else (0, 2)
    if array.ndim == last + 1 and array.shape[last] not in (1, 3):
        if array.shape[first] not in (1, 3):
            raise ValueError(
                f"an image array of shape {array.shape} needs 1 or 3 colour channels on its first or last axis"
                + (" after the batch axis" if batched else "")
            )
        array = np.moveaxis(array, first, -1)
    return array


def to_uint8(array: Any, vmin: Any = None, vmax: Any = None, symmetric: bool = False, dim=None) -> np.ndarray:
    """Normalise to [0, 1] between the bounds (given or from :func:`interval_norm_bounds`), scale to 0..255, truncate.

    uint8 input is returned unchanged. Truncation (not rounding) matches Zennit's ``imgify``.
    """
    array = as_array(array)
    if array.dtype == np.uint8:
        return array
    if vmin is None or vmax is None:
        low, high = interval_norm_bounds(array, symmetric=symmetric, dim=dim)
        vmin = low if vmin is None else vmin
        vmax = high if vmax is None else vmax
    return (scale_to_unit(array, vmin, vmax) * 255).astype(np.uint8)


def gridify(obj: Any, shape: tuple[int, int] | None = None, fill_value: Any = None, padding: int = 0) -> np.ndarray:
    """Tile a batch of images ``(N, H, W[, C])`` into one ``(rows*H, cols*W, C)`` array.

    Parameters
    ----------
    obj : array_like
        The batch; channels last, or first after the batch axis (a missing channel axis is added).
    shape : (int, int) or None
        ``(rows, cols)``; by default ``cols = int(sqrt(N))`` and ``rows = ceil(N / cols)``.
    fill_value : scalar or None
        The value of empty cells and padding; by default each channel's minimum over ``obj`` (as Zennit).
    padding : int
        Pixels between cells.
    """
    array = as_array(obj)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(f"gridify needs a batch of shape (N, H, W) or (N, H, W, C), not {array.shape}")
    array = _channels_last(array, batched=True)
    count, height, width, channels = array.shape
    if shape is None:
        cols = max(int(math.sqrt(count)), 1)
        shape = (math.ceil(count / cols), cols)
    rows, cols = shape
    if rows * cols < count:
        raise ValueError(f"a grid of {rows}x{cols} cells cannot hold {count} images")
    fill = array.min(axis=(0, 1, 2)) if fill_value is None else np.asarray(fill_value, dtype=array.dtype)
    step_h, step_w = height + padding, width + padding
    out = np.full((rows * step_h - padding, cols * step_w - padding, channels), fill, dtype=array.dtype)
    for index in range(count):
        row, col = divmod(index, cols)
        out[row * step_h : row * step_h + height, col * step_w : col * step_w + width] = array[index]
    return out


def to_image(array: np.ndarray, cmap: ColorMap | str = "bwr", level: float = 1.0) -> Image.Image:
    """Turn a uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` array into a ``P`` (with palette) or ``RGB`` image."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        image = Image.fromarray(np.ascontiguousarray(array), mode="P")
        image.putpalette(get_cmap(cmap).flat_palette(level))  # a flat list: works with Pillow 13
        return image
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def imgify(
    obj: Any,
    vmin: Any = None,
    vmax: Any = None,
    cmap: ColorMap | str = "bwr",
    level: float = 1.0,
    symmetric: bool = False,
    grid: Grid = False,
    gridfill: Any = None,
) -> Image.Image:
    """Turn an array into a Pillow image (Zennit's ``imgify`` semantics; see the module docstring for differences).

    Parameters
    ----------
    obj : array_like
        Without ``grid``: ``(H, W)`` or ``(H, W, C)``/``(C, H, W)`` with 1 or 3 channels.
        With ``grid``: ``(N, H, W)`` or ``(N, H, W, C)``/``(N, C, H, W)``.
    vmin, vmax : float or array_like or None
        Bounds that map to 0 and 255; by default taken over the whole array (per sample with a grid).
        uint8 input is used as is.
    cmap : ColorMap or str
        The colour map of single-channel images (a name or colour-map source).
    level : float
        The colour map's level (see :meth:`zplug.cmap.ColorMap.palette`).
    symmetric : bool
        Default bounds ``±max|a|`` instead of ``min``/``max``.
    grid : bool or (int, int)
        Treat the first axis as a batch and tile it (``True``: a square-ish grid; a pair: ``(rows, cols)``).
    gridfill : scalar or None
        The uint8 value of empty grid cells (default: the minimum).

    Returns
    -------
    PIL.Image.Image
        Mode ``P`` for one channel, ``RGB`` for three.
    """
    array = as_array(obj)
    if grid is not False and grid is not None:
        if not (grid is True or (isinstance(grid, tuple | list) and len(grid) == 2)):
            raise TypeError(f"grid must be True, False or a (rows, cols) pair, not {grid!r}")
        if array.ndim not in (3, 4):
            raise ValueError(f"a grid needs a batch of shape (N, H, W) or (N, H, W, C), not {array.shape}")
        if array.ndim == 4:
            array = _channels_last(array, batched=True)
        array = to_uint8(array, vmin, vmax, symmetric, dim=tuple(range(1, array.ndim)))
        array = gridify(array, shape=None if grid is True else tuple(grid), fill_value=gridfill)
    else:
        if array.ndim not in (2, 3):
            raise ValueError(f"an image needs shape (H, W), (H, W, C) or (C, H, W), not {array.shape}")
        if array.ndim == 3:
            array = _channels_last(array, batched=False)
        array = to_uint8(array, vmin, vmax, symmetric)
    return to_image(array, cmap, level)


def imsave(
    fp: str | os.PathLike | IO[bytes],
    obj: Any,
    vmin: Any = None,
    vmax: Any = None,
    cmap: ColorMap | str = "bwr",
    level: float = 1.0,
    grid: Grid = False,
    format: str | None = None,  # noqa: A002 - Pillow's name
    writer_params: dict[str, Any] | None = None,
    symmetric: bool = False,
    gridfill: Any = None,
) -> None:
    """Save ``imgify(obj, ...)`` to ``fp`` (a path or binary file): ``PIL.Image.save(fp, format, **writer_params)``."""
    image = imgify(obj, vmin=vmin, vmax=vmax, cmap=cmap, level=level, symmetric=symmetric, grid=grid, gridfill=gridfill)
    image.save(fp, format=format, **(writer_params or {}))


def heatmaps(
    relevance: Any, norm: str = "symmetric", cmap: ColorMap | str = "coldnhot", level: float = 1.0
) -> list[Image.Image]:
    """Return one palette image per sample of ``relevance`` (normalised with :func:`normalize_relevance`)."""
    unit = normalize_relevance(relevance, norm)
    if unit.ndim == 2:
        unit = unit[None]
    return [imgify(sample, vmin=0.0, vmax=1.0, cmap=cmap, level=level) for sample in unit]


def save_heatmaps(
    relevance: Any,
    pattern: str,
    norm: str = "symmetric",
    cmap: ColorMap | str = "coldnhot",
    level: float = 1.0,
    start: int = 0,
) -> list[str]:
    """Save one heatmap per sample to ``pattern.format(sample=start + i)`` (e.g. ``"heatmap_{sample:02d}.png"``).

    Returns the paths written; missing folders are created.
    """
    paths = []
    for number, image in enumerate(heatmaps(relevance, norm, cmap, level)):
        path = pattern.format(sample=start + number)
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        image.save(path)
        paths.append(path)
    return paths


def input_images(inputs: Any, bounds: tuple[float, float] | None = (0.0, 1.0)) -> list[Image.Image]:
    """Turn a batch of input images ``(N, C, H, W)`` or ``(N, H, W, C)`` into RGB (or palette) images.

    ``bounds`` are the values that map to black and white; ``None`` normalises each sample
    between its own minimum and maximum (for inputs standardised with a mean and std).
    uint8 input is used as is.
    """
    array = as_array(inputs)
    if array.ndim == 3:
        array = array[..., None]
    array = _channels_last(array, batched=True)
    if array.dtype != np.uint8:
        if bounds is None:
            array = to_uint8(array, dim=(1, 2, 3))
        else:
            array = to_uint8(array, vmin=bounds[0], vmax=bounds[1])
    return [to_image(sample, "gray") for sample in array]


def contact_sheet(
    inputs: Any,
    relevance: Any,
    labels: Sequence[str] | None = None,
    *,
    norm: str = "symmetric",
    cmap: ColorMap | str = "coldnhot",
    level: float = 1.0,
    columns: int | None = None,
    scale: int = 1,
    input_bounds: tuple[float, float] | None = (0.0, 1.0),
    padding: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Lay out each input next to its heatmap, in a grid of pairs, optionally with a label under each pair.

    Parameters
    ----------
    inputs : array_like
        ``(N, C, H, W)`` or ``(N, H, W, C)`` images (see :func:`input_images` for ``input_bounds``).
    relevance : array_like
        ``(N, C, H, W)`` or ``(N, H, W)`` relevance, normalised with ``norm``; or a list of N images.
    labels : sequence of str or None
        A caption per sample (e.g. ``"circle (pred. circle)"``).
    norm, cmap, level
        How heatmaps are made (see :func:`heatmaps`).
    columns : int or None
        Pairs per row; by default about square.
    input_bounds : (float, float) or None
        The input values shown as black and white; ``None``: each input's own minimum and maximum.
    scale : int
        Integer upscaling of each image (nearest neighbour), for small inputs.
    padding : int
        Pixels between images.
    background : (int, int, int)
        The sheet's colour.

    Returns
    -------
    PIL.Image.Image
        An RGB image.
    """
    left = input_images(inputs, input_bounds)
    right = relevance if isinstance(relevance, list) else heatmaps(relevance, norm, cmap, level)
    if len(left) != len(right):
        raise ValueError(f"{len(left)} inputs but {len(right)} heatmaps")
    if labels is not None and len(labels) != len(left):
        raise ValueError(f"{len(left)} inputs but {len(labels)} labels")
    count = len(left)
    if count == 0:
        raise ValueError("a contact sheet needs at least one input")
    width = max(image.width for image in left + right) * scale
    height = max(image.height for image in left + right) * scale
    font = ImageFont.load_default()
    text_width = text_height = 0
    if labels is not None:
        boxes = [ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), str(label), font=font) for label in labels]
        text_width = max(box[2] for box in boxes)
        text_height = max(box[3] for box in boxes) + padding
    columns = columns or max(int(math.ceil(math.sqrt(count))), 1)
    rows = math.ceil(count / columns)
    cell_w, cell_h = max(2 * width + padding, text_width), height + text_height
    sheet = Image.new("RGB", (columns * (cell_w + padding) + padding, rows * (cell_h + padding) + padding), background)
    draw = ImageDraw.Draw(sheet)
    for index, (image, heat) in enumerate(zip(left, right)):
        row, col = divmod(index, columns)
        x, y = padding + col * (cell_w + padding), padding + row * (cell_h + padding)
        for offset, picture in ((0, image), (width + padding, heat)):
            picture = picture.convert("RGB")
            if scale != 1:
                picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
            sheet.paste(picture, (x + offset, y))
        if labels is not None:
            draw.text((x, y + height + padding // 2), str(labels[index]), fill=(0, 0, 0), font=font)
    return sheet


__all__ = (
    "RELEVANCE_NORMS",
    "as_array",
    "contact_sheet",
    "gridify",
    "heatmaps",
    "imgify",
    "imsave",
    "input_images",
    "interval_norm_bounds",
    "normalize_relevance",
    "palette",
    "save_heatmaps",
    "scale_to_unit",
    "to_image",
    "to_uint8",
)
