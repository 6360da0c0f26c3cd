"""Tune a preset on the demo model and check it on held-out images: ``make tune-demo``.

1. Generate demo images (``zplug.demo.generate``): a tuning set and a held-out set (other seeds than
   the training data) as ImageFolder trees under ``OUT/data``.
2. ``zplug tune``: ``epsilon_gamma_box`` with one gamma per layer group (low, middle, high convolutions,
   dense layers), random search, 100 trials, maximising the symmetric relevance gain (SRG) on the
   tuning set. Rerunning resumes from ``OUT/tune/trials.jsonl``.
3. ``zplug evaluate`` on the held-out set: the default preset, the tuned one, ``epsilon_plus``, the plain
   gradient and random relevance, with the same metric; a table and the curves.

``--docs`` copies the held-out curves to ``docs/images/evaluation_demo_srg.png``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUNE_SEED, HOLDOUT_SEED = 100, 200  # the demo trains on seeds 1000+, validates on 1, and ships samples of 7
METRIC = ["--metric", "srg", "--metric-param", "patch_size=4", "--metric-param", "steps=8",
          "--metric-param", 'baseline="mean"']
SPACE = ["--space", "gamma_low=0.01..100:log", "--space", "gamma_mid=0.01..100:log",
         "--space", "gamma_high=0.01..100:log", "--space", "gamma_dense=[0.0, 0.01, 0.1, 1.0]"]


def write_images(folder: Path, n: int, seed: int) -> None:
    """Generate ``n`` demo images into ``folder/<class>/<index>.png`` (kept if already there)."""
    import numpy as np
    from PIL import Image

    from zplug.demo.data import CLASSES, generate_numpy

    if folder.exists() and len(list(folder.glob("*/*.png"))) == n:
        return
    shutil.rmtree(folder, ignore_errors=True)
    images, labels, _ = generate_numpy(n, seed)
    for index, (image, label) in enumerate(zip(images, labels)):
        path = folder / CLASSES[label] / f"{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(pixels).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "results" / "tune-demo"), help="output folder")
    parser.add_argument("--tune-images", type=int, default=32)
    parser.add_argument("--holdout-images", type=int, default=64)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--sampler", default="random", choices=("grid", "random", "tpe"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", action="store_true", help="copy the held-out curves into docs/images")
    args = parser.parse_args(argv)

    from zplug.cli import main as zplug

    out = Path(os.path.relpath(args.out))  # relative paths read better in the tuned preset's summary
    start = time.perf_counter()
    write_images(out / "data" / "tune", args.tune_images, TUNE_SEED)
    write_images(out / "data" / "holdout", args.holdout_images, HOLDOUT_SEED)
    tuned = out / "tune" / "epsilon_gamma_box_tuned.toml"
    status = zplug([
        "tune", str(out / "data" / "tune"), "--demo", "--preset", "epsilon_gamma_box", "--layer-groups", *SPACE,
        *METRIC, "--sampler", args.sampler, "--trials", str(args.trials), "--seed", str(args.seed),
        "--batch-size", "32", "--holdout", str(out / "data" / "holdout"), "--out", str(out / "tune"), "--overwrite",
        "--progress",
    ])
    if status:
        return status
    status = zplug([
        "evaluate", str(out / "data" / "holdout"), "--demo", "--preset", "epsilon_gamma_box", "--preset", str(tuned),
        "--preset", "epsilon_plus", "--attributor", "gradient", *METRIC, "--seed", str(args.seed), "--batch-size",
        "32", "--out", str(out / "holdout"), "--overwrite", "--plots", "--progress",
    ])
    if status:
        return status
    if args.docs:
        target = ROOT / "docs" / "images" / "evaluation_demo_srg.png"
        shutil.copyfile(out / "holdout" / "curves" / "srg.png", target)
        print(f"copied the held-out curves to {target}")
    print(f"tune demo: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
