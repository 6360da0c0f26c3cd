"""The demo CNN: BatchNorm after every convolution and one residual block.

Every operation is a module (ReLUs, the residual addition through :class:`zplug.layers.Sum`,
pooling, flattening), none of them in place, so each one can get its own rule, and BatchNorm
directly follows the convolution it can be merged into.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import nn

from zplug.demo.data import CLASSES
from zplug.layers import Sum

#: The file name of the bundled weights inside the package ``zplug.demo``.
WEIGHTS = "weights.pt"


class DemoNet(nn.Module):
    """A small residual CNN for the demo task (inputs: RGB in [0, 1], 32x32 or larger).

    Parameters
    ----------
    n_classes : int
        Number of outputs.
    width : int
        Channels of the first stage; the second stage has twice as many.
    """

    def __init__(self, n_classes: int = len(CLASSES), width: int = 16) -> None:
        super().__init__()
        wide = 2 * width
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        # residual block: relu1 -> conv2 -> bn2 -> relu2 -> conv3 -> bn3 -> (+ relu1) -> relu3
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.add = Sum()
        self.relu3 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv4 = nn.Conv2d(width, wide, 3, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(wide)
        self.relu4 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv5 = nn.Conv2d(wide, wide, 3, padding=1, bias=False)
        self.bn5 = nn.BatchNorm2d(wide)
        self.relu5 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(wide, wide)
        self.relu6 = nn.ReLU()
        self.fc2 = nn.Linear(wide, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the class scores (logits) for images ``x`` of shape (N, 3, H, W)."""
        x = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(x)))
        y = self.bn3(self.conv3(y))
        x = self.relu3(self.add(x, y))
        x = self.pool1(x)
        x = self.pool2(self.relu4(self.bn4(self.conv4(x))))
        x = self.relu5(self.bn5(self.conv5(x)))
        x = self.flatten(self.avgpool(x))
        return self.fc2(self.relu6(self.fc1(x)))


def weights_path() -> Path:
    """Return the path of the bundled weights file."""
    return Path(str(resources.files("zplug.demo").joinpath(WEIGHTS)))


def load_model(weights: str | Path | None = None) -> DemoNet:
    """Return the demo model in evaluation mode, with the bundled (or the given) weights.

    Parameters
    ----------
    weights : str or Path or None
        A state-dict file (loaded with ``weights_only=True``); ``None`` means the bundled one.
    """
    model = DemoNet()
    state = torch.load(weights_path() if weights is None else weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


__all__ = ("WEIGHTS", "DemoNet", "load_model", "weights_path")
