"""Train the demo model and write its weights and sample images: ``python -m zplug.demo.train``.

Deterministic: fixed seeds, one CPU thread, deterministic algorithms, and a fresh generated
training set per epoch (seed ``TRAIN_SEED + epoch``). It takes a few minutes on one core.
The defaults reproduce the bundled ``weights.pt`` and ``samples/<class>/<class>_<i>.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from zplug.demo.data import CLASSES, generate
from zplug.demo.model import WEIGHTS, DemoNet

TRAIN_SEED = 1000  #: epoch ``e`` trains on ``generate(n, TRAIN_SEED + e)``
VALIDATION_SEED = 1  #: the validation samples printed after each epoch
SAMPLE_SEED = 7  #: the committed sample images
HERE = Path(__file__).resolve().parent


def evaluate(model: torch.nn.Module, n: int = 1000, seed: int = VALIDATION_SEED) -> float:
    """Return the accuracy of ``model`` on ``n`` freshly generated samples."""
    images, labels, _ = generate(n, seed)
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(batch).argmax(1) for batch in images.split(250)])
    return (predictions == labels).double().mean().item()


def train(
    epochs: int = 20,
    per_epoch: int = 4000,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    validation: int = 1000,
) -> DemoNet:
    """Train a :class:`DemoNet` from scratch (AdamW, one-cycle schedule) and return it in evaluation mode.

    Parameters
    ----------
    epochs, per_epoch, batch_size, lr, seed
        Epochs, generated samples per epoch, batch size, peak learning rate, seed of the initialisation.
    validation : int
        Samples to report the validation accuracy on after each epoch (0: no report).
    """
    torch.manual_seed(seed)
    model = DemoNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (per_epoch // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        start = time.perf_counter()
        images, labels, _ = generate(per_epoch, TRAIN_SEED + epoch)
        order = torch.randperm(per_epoch)
        model.train()
        total = 0.0
        for first in range(0, per_epoch - batch_size + 1, batch_size):
            index = order[first : first + batch_size]
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
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


def write_samples(root: Path, per_class: int = 3, seed: int = SAMPLE_SEED) -> list[Path]:
    """Write ``per_class`` generated images per class as ``root/<class>/<class>_<i>.png`` (ImageFolder layout)."""
    from PIL import Image

    counts = dict.fromkeys(CLASSES, 0)
    images, labels, _ = generate(per_class * len(CLASSES) * 4, seed)
    written = []
    for image, label in zip(images.numpy(), labels.tolist()):
        name = CLASSES[label]
        if counts[name] == per_class:
            continue
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}_{counts[name]}.png"
        Image.fromarray(np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(path)
        counts[name] += 1
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m zplug.demo.train", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--per-epoch", type=int, default=4000, help="training samples per epoch")
    parser.add_argument("--output", type=Path, default=HERE / WEIGHTS, help="where to write the state dict")
    parser.add_argument("--samples", type=Path, default=HERE / "samples", help="where to write the sample images")
    parser.add_argument("--no-samples", action="store_true", help="do not write sample images")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model = train(epochs=args.epochs, per_epoch=args.per_epoch)
    torch.save(model.state_dict(), args.output)
    print(f"weights written to {args.output}; test accuracy {evaluate(model, 2000, seed=2):.4f}")
    if not args.no_samples:
        paths = write_samples(args.samples)
        print(f"{len(paths)} sample images written to {args.samples}")


if __name__ == "__main__":
    main()
