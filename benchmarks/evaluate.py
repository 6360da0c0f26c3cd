"""Benchmark zplug.evaluate against Quantus 0.6.0 on the same work, in one process, interleaved.

Usage::

    python benchmarks/evaluate.py                                  # every case, 3 rounds, updates docs/benchmarks.md
    python benchmarks/evaluate.py --cases demo:16:region --rounds 2 --out -

A case is ``model:batch:work``:

* model ``demo`` (the bundled demo CNN, 3x32x32 inputs) or ``resnet18`` (torchvision, random weights,
  3x64x64 inputs);
* work ``region``: RegionPerturbation, MoRF, every patch (4x4 on the demo, 8x8 on ResNet18: 64 steps), or
  ``pixels``: PixelFlipping on single input elements, 96 steps (features_in_step 32 on the demo, 128 on
  ResNet18), both with the ``black`` baseline and softmax scores, Quantus's defaults.

``--threads 2,1`` runs every case with each torch thread count (one table, a row per case and count).

Both libraries get the same float32 model, inputs, labels and attributions (Gaussian noise, no ties). Each
variant runs once to warm up; then every round runs both, alternating which goes first; the table shows the
median wall time (``perf_counter`` after ``gc.collect()``) and the largest difference between the curves.
zplug scores every (sample, step) input in shared batches of up to 64 (``batch_size``); Quantus scores
one step of the batch per forward call.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _measure import replace_section

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CASES = ("demo:16:region", "demo:16:pixels", "demo:1:region", "resnet18:16:region", "resnet18:16:pixels",
                 "resnet18:1:region")
NOTES = """\
Both libraries make the same forward passes, one per perturbed input (the last column is the largest
difference between their curves: float32 round-off), so on a CPU the difference lies in how the passes are
grouped. Quantus scores one step of the batch per forward call; zplug up to `batch_size` (64) perturbed
inputs of any samples and steps per call. With one thread a forward pass costs about the same per image at
any batch size, and the ratio is near 1 for batches of 16 images; single images gain from fewer calls and
from less work between them. With two threads, small calls wait for both threads at every operation, which
on a busy machine (see the load average) costs far more than the arithmetic; fewer, larger calls avoid
most of it. See docs/evaluation.md (Speed and memory) for a reading of these numbers."""
BEGIN = "<!-- evaluation benchmarks: written by benchmarks/evaluate.py -->"
END = "<!-- end of evaluation benchmarks -->"


def build(model_name: str, batch: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    if model_name == "demo":
        from zplug.demo.model import load_model

        model, shape, classes = load_model(), (3, 32, 32), 4
    else:
        import torchvision

        model, shape, classes = torchvision.models.resnet18(num_classes=10).eval(), (3, 64, 64), 10
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *shape, generator=generator)
    y = torch.randint(0, classes, (batch,), generator=generator)
    a = torch.randn(batch, *shape, generator=generator)
    return model, x, y, a


def work_params(model_name: str, work: str) -> tuple[dict, Callable[[], object]]:
    import quantus

    if work == "region":
        patch = 4 if model_name == "demo" else 8
        quantus_metric = quantus.RegionPerturbation(
            patch_size=patch, regions_evaluation=64, disable_warnings=True, display_progressbar=False
        )
        return {"metric": "region_perturbation", "patch_size": patch, "regions": 64}, quantus_metric
    per_step = 32 if model_name == "demo" else 128
    quantus_metric = quantus.PixelFlipping(features_in_step=per_step, disable_warnings=True, display_progressbar=False)
    return {"metric": "pixel_flipping", "channels": "separate", "per_step": per_step}, quantus_metric


def make_variants(case: str) -> dict[str, Callable[[], np.ndarray]]:
    import zplug

    model_name, batch, work = case.split(":")
    model, x, y, a = build(model_name, int(batch))
    params, quantus_metric = work_params(model_name, work)

    def run_zplug() -> np.ndarray:
        result = zplug.evaluate(model, x, y, a, **params)
        curve = next(iter(result.curves.values()))
        return (curve.drops if work == "region" else curve.scores)[:, 1:].numpy()

    def run_quantus() -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = quantus_metric(
                model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), channel_first=True,
                device="cpu",
            )
        return np.asarray(out, dtype=np.float64)

    return {"zplug": run_zplug, "quantus": run_quantus}


def time_case(variants: dict[str, Callable[[], np.ndarray]], rounds: int) -> tuple[dict[str, list[float]], float]:
    outputs = {name: fn() for name, fn in variants.items()}  # warm-up, and the curves to compare
    difference = float(np.abs(outputs["zplug"] - outputs["quantus"]).max())
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names[round_ % 2 :] + names[: round_ % 2]:
            gc.collect()
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times, difference


def render(results: list[dict], meta: dict) -> str:
    lines = [
        BEGIN,
        "## Evaluation: zplug vs Quantus 0.6.0",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['rounds']} "
        f"interleaved rounds per case after one warm-up call each; median wall time; load average "
        f"{meta['load']} when the run started.",
        "Produced by `python benchmarks/evaluate.py` (see its docstring for the cases).",
        "",
        "| case | work | threads | zplug | Quantus | Quantus / zplug | max curve diff. |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        model_name, batch, work = res["case"].split(":")
        zplug_time = statistics.median(res["times"]["zplug"])
        quantus_time = statistics.median(res["times"]["quantus"])
        label = {"region": "RegionPerturbation, 64 steps", "pixels": "PixelFlipping, 96 steps"}[work]
        lines.append(
            f"| {model_name}, batch {batch} | {label} | {res['threads']} | {_fmt(zplug_time)} | {_fmt(quantus_time)} | "
            f"**{quantus_time / zplug_time:.1f}** | {res['difference']:.1e} |"
        )
    lines += ["", NOTES, "", END]
    return "\n".join(lines)


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def write_section(path: Path, section: str) -> None:
    """Replace the evaluation section of ``path`` (or append it)."""
    replace_section(path, section, BEGIN, END)

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated model:batch:work")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default=None, help="comma-separated torch thread counts (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown file, or - for stdout")
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    meta = {
        "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "rounds": args.rounds,
        "load": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    results = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for case in args.cases.split(","):
            times, difference = time_case(make_variants(case), args.rounds)
            results.append({"case": case, "threads": threads, "times": times, "difference": difference})
            print(render(results[-1:], meta).splitlines()[-3], flush=True)
    section = render(results, meta)
    if args.out == "-":
        print(section)
    else:
        write_section(Path(args.out), section)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
