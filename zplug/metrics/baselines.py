"""Baselines: the values that removed input elements take.

The occlusion baseline changes what a perturbation metric measures (and how it ranks
explanations), so it is always a named, recorded choice:

``"black"``
    each sample's smallest value (over all its elements), as Quantus's ``"black"``;
``"white"``
    each sample's largest value;
``"mean"``
    each sample's mean over all its elements, taken once on the clean sample;
``"running_mean"``
    the mean of the sample *as perturbed so far*, taken anew before every step (over the padded
    sample for patches): Quantus 0.6.0's ``"mean"``, which drifts as the input is removed;
``"blur"``
    the sample blurred with a Gaussian of standard deviation ``blur_sigma`` pixels (images);
``"noise"``
    uniform noise between the sample's smallest and largest value, drawn once per element;
a number
    that value everywhere; the Python API also takes a tensor broadcastable to the inputs
    (e.g. the normalised black of each channel).
"""

from __future__ import annotations

import math
from typing import Any

from zplug._lazy import lazy_module
from zplug.errors import SpecError
from zplug.parts import is_tensor

torch = lazy_module("torch")

#: The named baselines.
NAMED = ("black", "white", "mean", "running_mean", "blur", "noise")


def check_baseline(name: str, value: Any) -> None:
    """Accept a named baseline, a number or a tensor."""
    if isinstance(value, str) and value in NAMED or is_tensor(value):
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return
    raise SpecError(f"parameter '{name}' must be one of {', '.join(NAMED)}, a number or a tensor (got {value!r})")


def fill_values(
    x: torch.Tensor, baseline: Any, *, blur_sigma: float = 4.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Return the values removed elements take, shaped like ``x`` (``running_mean`` excepted).

    Parameters
    ----------
    x : torch.Tensor
        The clean inputs ``(N, C, ...)``.
    baseline : str, number or tensor
        See the module docstring; ``"running_mean"`` is computed step by step, not here.
    blur_sigma : float
        The standard deviation of the ``"blur"`` baseline, in pixels.
    generator : torch.Generator or None
        The random numbers of ``"noise"`` (a CPU generator; the noise is drawn on the CPU so that
        a seed gives the same values on every device).
    """
    batch = x.shape[0]
    flat = x.reshape(batch, -1)
    per_sample = (batch,) + (1,) * (x.ndim - 1)
    if is_tensor(baseline):
        try:
            return torch.broadcast_to(baseline.to(x), x.shape)
        except RuntimeError:
            raise SpecError(
                f"a baseline tensor must broadcast to the inputs' shape {tuple(x.shape)} (got {tuple(baseline.shape)})"
            ) from None
    if not isinstance(baseline, str):
        return torch.full_like(x, float(baseline))
    if baseline == "black":
        return flat.amin(1).reshape(per_sample).expand_as(x)
    if baseline == "white":
        return flat.amax(1).reshape(per_sample).expand_as(x)
    if baseline == "mean":
        return flat.mean(1).reshape(per_sample).expand_as(x)
    if baseline == "noise":
        low, high = flat.amin(1).reshape(per_sample), flat.amax(1).reshape(per_sample)
        uniform = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x)
        return low + (high - low) * uniform
    if baseline == "blur":
        return gaussian_blur(x, blur_sigma)
    raise SpecError(f"baseline '{baseline}' has no fixed values")  # running_mean: see running_mean_table


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur images ``(N, C, H, W)`` channel by channel with a Gaussian (edges repeated)."""
    if x.ndim != 4:
        raise SpecError(
            f"the 'blur' baseline needs images of shape (batch, channels, height, width); got {tuple(x.shape)}"
        )
    if sigma <= 0:
        return x.clone()
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x)
    channels = x.shape[1]
    out = x
    for dim in (2, 3):
        shape = [1, 1, 1, 1]
        shape[dim] = kernel.numel()
        weight = kernel.reshape(shape).expand(channels, 1, *shape[2:])
        widths = [0, 0, 0, 0]
        widths[(3 - dim) * 2 : (3 - dim) * 2 + 2] = [radius, radius]
        out = torch.nn.functional.pad(out, widths, mode="replicate")
        out = torch.nn.functional.conv2d(out, weight, groups=channels)
    return out


def running_mean_table(x_flat: torch.Tensor, step: torch.Tensor, steps: int) -> torch.Tensor:
    """The ``running_mean`` baseline of every step: ``(N, steps + 2)`` (columns 0 and ``steps + 1`` unused).

    Before step ``k`` the fill value is the mean of the sample after steps ``1 .. k - 1``; elements
    removed at step ``j`` hold the value of step ``j``. With ``S`` the running sum and ``E`` the
    number of elements: ``fill_k = S_{k-1} / E`` and ``S_k = S_{k-1} - R_k + n_k fill_k``, where
    ``R_k`` and ``n_k`` are the clean sum and the number of the elements removed at step ``k``.

    Parameters
    ----------
    x_flat : torch.Tensor
        The clean (padded) samples, flattened: ``(N, E)``.
    step : torch.Tensor
        The step at which each element is removed, ``(N, E)`` (``steps + 1``: never).
    steps : int
        The number of steps.
    """
    batch, elements = x_flat.shape
    values = x_flat.double()
    removed_sum = torch.zeros(batch, steps + 2, dtype=torch.float64, device=x_flat.device)
    removed_sum.scatter_add_(1, step, values)
    removed_count = torch.zeros_like(removed_sum).scatter_add_(1, step, torch.ones_like(values))
    table = torch.zeros_like(removed_sum)
    total = values.sum(1)
    for k in range(1, steps + 1):
        fill = total / elements
        table[:, k] = fill
        total = total - removed_sum[:, k] + removed_count[:, k] * fill
    return table


__all__ = ("NAMED", "check_baseline", "fill_values", "gaussian_blur", "running_mean_table")
