"""Train the demo ViT and write its weights: ``python -m zplug.demo.train_vit``.

Deterministic like the CNN's script (:mod:`zplug.demo.train`): fixed seeds, one CPU thread,
deterministic algorithms, a fresh generated training set per epoch (seed ``TRAIN_SEED + epoch``),
light augmentation by random flips and 90-degree rotations drawn from a seeded generator. The
defaults reproduce the bundled ``vit_weights.pt``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.nn import functional as F  # noqa: N812

from zplug.demo.data import generate
from zplug.demo.train import TRAIN_SEED, evaluate
from zplug.demo.vit import WEIGHTS, DemoViT

HERE = Path(__file__).resolve().parent
AUGMENT_SEED = 5  #: seed of the flips and rotations


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip and rotate each image by a multiple of 90 degrees (the classes are invariant to both)."""
    flips = torch.rand(images.shape[0], generator=generator) < 0.5
    turns = torch.randint(4, (images.shape[0],), generator=generator)
    out = torch.where(flips[:, None, None, None], images.flip(-1), images)
    return torch.stack([torch.rot90(image, int(k), dims=(1, 2)) for image, k in zip(out, turns)])


def train(
    epochs: int = 30,
    per_epoch: int = 4000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    validation: int = 1000,
) -> DemoViT:
    """Train a :class:`DemoViT` from scratch (AdamW, one-cycle schedule) and return it in evaluation mode.

    Parameters
    ----------
    epochs, per_epoch, batch_size, lr, seed
        Epochs, generated samples per epoch, batch size, peak learning rate, seed of the initialisation.
    validation : int
        Samples to report the validation accuracy on after each epoch (0: no report).
    """
    torch.manual_seed(seed)
    model = DemoViT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * (per_epoch // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(AUGMENT_SEED)
    for epoch in range(epochs):
        start = time.perf_counter()
        images, labels, _ = generate(per_epoch, TRAIN_SEED + epoch)
        images = _augment(images, generator)
        order = torch.randperm(per_epoch)
        model.train()
        total = 0.0
        for first in range(0, per_epoch - batch_size + 1, batch_size):
            index = order[first : first + batch_size]
            loss = F.cross_entropy(model(images[index]), labels[index], label_smoothing=0.05)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += loss.item()
        if validation:
            accuracy = evaluate(model, validation)
            batches = per_epoch // batch_size
            print(
                f"epoch {epoch + 1:2d}/{epochs}: loss {total / batches:.4f}, "
                f"validation accuracy {accuracy:.4f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m zplug.demo.train_vit", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--per-epoch", type=int, default=4000, help="training samples per epoch")
    parser.add_argument("--output", type=Path, default=HERE / WEIGHTS, help="where to write the state dict")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model = train(epochs=args.epochs, per_epoch=args.per_epoch)
    torch.save(model.state_dict(), args.output)
    print(f"weights written to {args.output}; test accuracy {evaluate(model, 2000, seed=2):.4f}")


if __name__ == "__main__":
    main()
