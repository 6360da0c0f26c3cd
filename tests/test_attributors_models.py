"""Small models shared by the attributor, explain and ledger tests (imported by path; no tests here)."""

from __future__ import annotations

import torch
from torch import nn

from zplug.layers import Sum


def mlp(activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear-activation-linear-activation-linear on 6 features, 3 classes."""
    return nn.Sequential(nn.Linear(6, 8), activation(), nn.Linear(8, 8), activation(), nn.Linear(8, 3)).eval()


def cnn() -> nn.Sequential:
    """Conv-ReLU-MaxPool-Conv-ReLU-Flatten-Linear on 3x8x8 inputs, 4 classes."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 4),
    ).eval()


class Block(nn.Module):
    """A residual block whose addition is a ``Sum`` module (or a functional ``+``)."""

    def __init__(self, channels: int, functional_add: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.add = None if functional_add else Sum()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu1(self.bn(self.conv1(x))))
        out = out + x if self.add is None else self.add(out, x)
        return self.relu2(out)


class ResNetLike(nn.Module):
    """Stem conv, two residual blocks, average pooling and a linear head; 3x8x8 inputs, 4 classes."""

    def __init__(self, functional_add: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.block1 = Block(4, functional_add)
        self.block2 = Block(4, functional_add)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():  # non-trivial BN statistics
            for block in (self.block1, self.block2):
                block.bn.running_mean.uniform_(-0.2, 0.2)
                block.bn.running_var.uniform_(0.5, 1.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.relu(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))
