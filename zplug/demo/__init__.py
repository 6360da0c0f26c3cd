"""The bundled demo: a procedurally generated shape task, a small trained CNN and sample images.

* :func:`generate` makes ``images, labels, masks`` (coloured shapes on textured, noisy
  backgrounds; the class is the shape, the mask the pixels it covers);
* :func:`load_model` returns the trained :class:`DemoNet` (BatchNorm after every convolution,
  one residual block summed by :class:`zplug.layers.Sum`);
* :func:`load_vit` returns the trained :class:`DemoViT`, a small vision transformer for the
  same task (``python -m zplug.demo.train_vit``);
* :func:`load_samples` reads the committed ``samples/<class>/*.png``.

``python -m zplug.demo.train`` reproduces the weights and samples. Attributes are imported
lazily, so importing this package does not import torch.
"""

from __future__ import annotations

from zplug._lazy import lazy_attributes
from zplug.demo.data import CLASSES, IMAGE_SIZE

_LAZY = {
    "generate": "zplug.demo.data",
    "generate_numpy": "zplug.demo.data",
    "DemoNet": "zplug.demo.model",
    "load_model": "zplug.demo.model",
    "DemoViT": "zplug.demo.vit",
    "load_vit": "zplug.demo.vit",
    "weights_path": "zplug.demo.model",
    "load_samples": "zplug.demo.samples",
    "sample_files": "zplug.demo.samples",
    "samples_dir": "zplug.demo.samples",
}


__getattr__ = lazy_attributes("zplug.demo", _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = (
    "CLASSES",
    "IMAGE_SIZE",
    "DemoNet",
    "DemoViT",
    "generate",
    "generate_numpy",
    "load_model",
    "load_samples",
    "load_vit",
    "sample_files",
    "samples_dir",
    "weights_path",
)
