"""The bundled sample images: ``samples/<class>/<class>_<i>.png`` (an ImageFolder tree)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from zplug.demo.data import CLASSES


def samples_dir() -> Path:
    """Return the folder of the bundled sample images (one sub-folder per class)."""
    return Path(str(resources.files("zplug.demo").joinpath("samples")))


def sample_files() -> list[tuple[Path, int]]:
    """Return ``(path, label)`` for every bundled sample, sorted by class then file name."""
    root = samples_dir()
    return [(path, label) for label, name in enumerate(CLASSES) for path in sorted((root / name).glob("*.png"))]


def load_samples():
    """Load the bundled samples as ``images, labels, paths`` (float32 (N, 3, H, W) in [0, 1], int64 (N,))."""
    import torch
    from PIL import Image

    files = sample_files()
    arrays = [np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255 for path, _ in files]
    images = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return images, labels, [path for path, _ in files]


__all__ = ("load_samples", "sample_files", "samples_dir")
