"""Units: the groups of input elements that a perturbation metric removes together.

A sample of shape ``(C, *spatial)`` is cut into *units*: single elements, pixels (one spatial
position with all its channels) or square patches (all channels). :class:`Units` holds the unit of
every element of one sample, so the relevance of a unit is the sum over its elements, and a
unit's removal turns all its elements into the baseline.

Patches follow Quantus's grid: when the patch size does not divide the height or width, the grid is
centred (the image is padded by ``floor(pad / 2)`` before and ``ceil(pad / 2)`` after), so border
patches are cut. The curves are computed on the padded sample, whose padding is removed before
the model sees it; the padding only matters for the ``running_mean`` baseline, which averages over
the padded sample as Quantus does.
"""

from __future__ import annotations

import math

import attrs

from zplug._lazy import lazy_module
from zplug.errors import SpecError

torch = lazy_module("torch")


@attrs.frozen(kw_only=True, eq=False)
class Units:
    """The units of one sample.

    Attributes
    ----------
    index : torch.Tensor
        Long tensor of shape ``(E,)``: the unit of each element of the (padded) sample, flattened
        in C order.
    count : int
        The number of units.
    padding : tuple of (int, int) pairs
        ``(before, after)`` for each spatial dimension (zeros when nothing is padded).
    kind : str
        ``"elements"``, ``"pixels"`` or ``"patches of NxN"`` (for messages and records).
    """

    index: torch.Tensor
    count: int
    padding: tuple[tuple[int, int], ...] = ()
    kind: str = "elements"

    @property
    def padded(self) -> bool:
        """Whether the sample is padded."""
        return any(before or after for before, after in self.padding)

    def pad(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """Pad a batch ``(N, C, *spatial)``: ``mode`` ``"edge"`` repeats the border, ``"zeros"`` adds zeros."""
        if not self.padded:
            return x
        widths = [w for before, after in reversed(self.padding) for w in (before, after)]
        if mode == "zeros":
            return torch.nn.functional.pad(x, widths)
        return torch.nn.functional.pad(x, widths, mode="replicate")

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Remove the padding from a batch ``(B, C, *spatial)``."""
        if not self.padded:
            return x
        slices = [slice(None), slice(None)]
        for (before, after), size in zip(self.padding, x.shape[2:]):
            slices.append(slice(before, size - after))
        return x[tuple(slices)]

    def relevance(self, relevance: torch.Tensor) -> torch.Tensor:
        """Sum a relevance batch ``(N, C, *spatial)`` over each unit: ``(N, count)`` in float64."""
        flat = self.pad(relevance, "zeros").reshape(relevance.shape[0], -1).double()
        out = torch.zeros(relevance.shape[0], self.count, dtype=torch.float64, device=relevance.device)
        return out.index_add_(1, self.index.to(relevance.device), flat)


def element_units(shape: tuple[int, ...]) -> Units:
    """Every element of a sample of ``shape`` is a unit."""
    count = math.prod(shape)
    return Units(index=torch.arange(count), count=count, padding=tuple((0, 0) for _ in shape[1:]), kind="elements")


def pixel_units(shape: tuple[int, ...]) -> Units:
    """Every spatial position of a sample ``(C, *spatial)``, with all its channels, is a unit."""
    if len(shape) < 2:
        raise SpecError(
            f"pixels need inputs of shape (batch, channels, ...spatial); a sample has shape {tuple(shape)}: "
            "use channels='separate' to remove single elements"
        )
    positions = math.prod(shape[1:])
    index = torch.arange(positions).repeat(shape[0])
    return Units(index=index, count=positions, padding=tuple((0, 0) for _ in shape[1:]), kind="pixels")


def padding_of(size: int, patch: int) -> tuple[int, int]:
    """Quantus's centred padding of one dimension: ``(floor(pad / 2), ceil(pad / 2))``."""
    missing = (-size) % patch
    return missing // 2, missing - missing // 2


def patch_units(shape: tuple[int, ...], size: int) -> Units:
    """Square patches of ``size`` x ``size`` pixels (all channels) on a centred grid of an image ``(C, H, W)``."""
    if size == 1:
        return pixel_units(shape)
    if len(shape) != 3:
        raise SpecError(
            f"patches need image inputs of shape (batch, channels, height, width); a sample has shape {tuple(shape)}"
        )
    channels, height, width = shape
    padding = (padding_of(height, size), padding_of(width, size))
    rows = (height + sum(padding[0])) // size
    cols = (width + sum(padding[1])) // size
    row = torch.arange(rows * size) // size
    col = torch.arange(cols * size) // size
    grid = (row[:, None] * cols + col[None, :]).reshape(-1)
    return Units(index=grid.repeat(channels), count=rows * cols, padding=padding, kind=f"patches of {size}x{size}")


__all__ = ("Units", "element_units", "padding_of", "patch_units", "pixel_units")
