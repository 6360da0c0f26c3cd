"""Model factories (random weights), weight loading and ImageNet input conventions."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from os import PathLike
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and torchvision are imported when a model is built, not to register the factories
    import torch

#: Per-channel mean and standard deviation of ImageNet images in [0, 1] (torchvision's convention).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The factories registered for the command line, by name. Each returns an evaluation-mode model
#: with random weights (torchvision's initialisation); no weights are downloaded.
MODEL_NAMES = (
    "vgg11",
    "vgg11_bn",
    "vgg16",
    "vgg16_bn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "densenet121",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "vit_b_16",
    "swin_t",
    "swin_v2_t",
    "maxvit_t",
    "convnext_tiny",
)


def build(name: str, *, num_classes: int = 1000, weights: str | PathLike | None = None) -> torch.nn.Module:
    """Build the torchvision model ``name`` with random weights, in evaluation mode.

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES`.
    num_classes : int
        Size of the classifier's output.
    weights : path or None
        A ``state_dict`` file to load with :func:`load_weights`.
    """
    if name not in MODEL_NAMES:
        raise KeyError(f"unknown torchvision model '{name}' (known: {', '.join(MODEL_NAMES)})")
    import torchvision.models

    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def load_weights(model: torch.nn.Module, path: str | PathLike) -> torch.nn.Module:
    """Load a ``state_dict`` saved with ``torch.save(model.state_dict(), path)`` into ``model``.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)``, which
    refuses pickled code, so files from untrusted sources cannot execute anything. torchvision's
    published checkpoints (``*.pth`` from ``download.pytorch.org``) are such ``state_dict`` files.
    """
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model.load_state_dict(state)
    return model


def factories() -> dict[str, Callable[[], torch.nn.Module]]:
    """Return ``{name: factory}`` for :data:`MODEL_NAMES` (what the plugin registers)."""
    return {name: partial(build, name) for name in MODEL_NAMES}


def _channel_tensor(values: tuple[float, ...], dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    import torch

    return torch.tensor(values, dtype=dtype, device=device).reshape(1, -1, 1, 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Map images with values in ``[0, 1]`` (shape ``(N, 3, H, W)``) to the network's input range."""
    mean = _channel_tensor(IMAGENET_MEAN, images.dtype, images.device)
    std = _channel_tensor(IMAGENET_STD, images.dtype, images.device)
    return (images - mean) / std


def imagenet_bounds(
    dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(low, high)``, the normalised images of 0 and 1, each of shape ``(1, 3, 1, 1)`` (float32 by default).

    These are the z-box bounds (``zbox`` rule, ``low``/``high`` parameters of the
    ``epsilon_gamma_box`` preset) for inputs made with :func:`normalize`.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    mean = _channel_tensor(IMAGENET_MEAN, dtype, device)
    std = _channel_tensor(IMAGENET_STD, dtype, device)
    return (0 - mean) / std, (1 - mean) / std


__all__ = (
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_NAMES",
    "build",
    "factories",
    "imagenet_bounds",
    "load_weights",
    "normalize",
)
