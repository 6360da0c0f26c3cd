"""What the coverage analysis costs: ``zplug.resolve`` with and without it, and the first-call analysis.

Usage::

    python benchmarks/coverage.py                       # resnet50, vgg16, densenet121 at 224 px, 5 rounds
    python benchmarks/coverage.py --models resnet18 --size 64 --rounds 3

For each model, in one process and interleaved (the order rotates every round):

* ``resolve`` — ``zplug.resolve(model, "epsilon_plus")`` with the analysis cache emptied first (torch.fx
  trace and judgement of every operation, as the first resolve of a model pays it);
* ``resolve cached`` — the same with the cache kept (every later resolve of the same model);
* ``resolve without`` — the same with the analysis replaced by a constant (what resolve cost before);
* ``forward`` and ``forward first call`` — one forward pass under the applied mapping, without and with
  the hooks that analyse the autograd graph of a first call (used where torch.fx cannot trace a model).

The table shows the median of each, in milliseconds.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import weakref
from collections.abc import Callable

import torch

import zplug
import zplug.coverage
from zplug.coverage import Coverage, treatment_table
from zplug.coverage.firstcall import FirstCall


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def variants(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    def cold() -> object:
        zplug.coverage._cache = weakref.WeakKeyDictionary()
        return zplug.resolve(model, "epsilon_plus")

    def without() -> object:
        original = zplug.coverage.analyse
        zplug.coverage.analyse = lambda *a, **k: Coverage()
        try:
            return zplug.resolve(model, "epsilon_plus")
        finally:
            zplug.coverage.analyse = original

    mapping = zplug.resolve(model, "epsilon_plus")

    def forward(first_call: bool) -> Callable[[], object]:
        def run() -> object:
            leaf = x.clone().requires_grad_(True)
            with mapping._applied(model, ()):
                recorder = FirstCall(model, mapping.rules, treatment_table(), lambda c: None) if first_call else None
                try:
                    return model(leaf)
                finally:
                    if recorder is not None:
                        recorder.remove()

        return run

    return {
        "resolve": cold,
        "resolve cached": lambda: zplug.resolve(model, "epsilon_plus"),
        "resolve without": without,
        "forward": forward(False),
        "forward first call": forward(True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,vgg16,densenet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import torchvision

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x3x{args.size}x{args.size}")
    header = None
    for name in args.models.split(","):
        model = getattr(torchvision.models, name)().eval()
        x = torch.rand(1, 3, args.size, args.size)
        cases = variants(model, x)
        for fn in cases.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in cases}
        keys = list(cases)
        for r in range(args.rounds):
            for key in keys[r % len(keys):] + keys[: r % len(keys)]:
                times[key].append(timed(cases[key]))
        if header is None:
            header = ["model", *keys]
            print(" | ".join(f"{h:>18}" for h in header))
        print(" | ".join([f"{name:>18}", *(f"{1000 * statistics.median(times[k]):18.1f}" for k in keys)]))


if __name__ == "__main__":
    main()
