"""The demo vision transformer: the same shape task as the demo CNN, solved by a small ViT.

Written as an ordinary PyTorch model (``torch.nn.MultiheadAttention``, ``+`` for residuals and
the position embedding), so that ``canonizers = "auto"`` has to do the work: the
``multihead_attention`` canonizer makes the attention visible to rules, ``residual_sum`` the
additions. ``python -m zplug.demo.train_vit`` reproduces the bundled weights.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import nn

from zplug.demo.data import CLASSES, IMAGE_SIZE

#: The file name of the bundled weights inside the package ``zplug.demo``.
WEIGHTS = "vit_weights.pt"


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block's output for tokens ``x`` of shape (N, L, dim)."""
        y = self.norm1(x)
        x = x + self.attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class DemoViT(nn.Module):
    """A small vision transformer for the demo task (inputs: RGB in [0, 1], 32x32).

    Parameters
    ----------
    n_classes : int
        Number of outputs.
    dim, depth, heads, hidden, patch : int
        Token width, number of blocks, attention heads, MLP width, patch size in pixels (even).
    image_size : int
        Height and width of the inputs.
    """

    #: How ``zplug explain`` prepares images for it: 32x32 RGB in [0, 1], the demo's class names.
    zplug_input = {"resize": IMAGE_SIZE, "crop": IMAGE_SIZE, "classes": list(CLASSES)}

    def __init__(
        self,
        n_classes: int = len(CLASSES),
        dim: int = 64,
        depth: int = 3,
        heads: int = 4,
        hidden: int = 128,
        patch: int = 4,
        image_size: int = IMAGE_SIZE,
    ) -> None:
        super().__init__()
        tokens = (image_size // patch) ** 2
        # A convolutional stem (as in "early convolutions help transformers see better") turns each
        # patch into a token: far more data-efficient than one linear patch projection.
        self.embed = nn.Sequential(
            nn.Conv2d(3, dim // 2, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(dim // 2, dim // 2, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(dim, dim, patch // 2, stride=patch // 2),
        )
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the class scores (logits) for images ``x`` of shape (N, 3, H, W)."""
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = self.blocks(tokens + self.position)
        return self.head(self.norm(tokens)[:, 0])


def weights_path() -> Path:
    """Return the path of the bundled weights file."""
    return Path(str(resources.files("zplug.demo").joinpath(WEIGHTS)))


def load_vit(weights: str | Path | None = None) -> DemoViT:
    """Return the demo ViT in evaluation mode, with the bundled (or the given) weights.

    Parameters
    ----------
    weights : str or Path or None
        A state-dict file (loaded with ``weights_only=True``); ``None`` means the bundled one.
    """
    model = DemoViT()
    state = torch.load(weights_path() if weights is None else weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


__all__ = ("WEIGHTS", "Block", "DemoViT", "load_vit", "weights_path")
