"""Benchmark zplug's cp_lrp against LXT 2.1 on torchvision's vit_b_16, in one process, interleaved.

Usage::

    python benchmarks/bench_transformers.py                        # vit_b_16 at batch 1 and 4, 5 rounds
    python benchmarks/bench_transformers.py --cases vit_b_16:1 --rounds 3 --out -

Method, as ``bench.py``: every variant (the plain gradient, zplug ``cp_lrp``, LXT's torchvision-ViT map)
runs once to warm up, then ``--rounds`` rounds run each variant once in rotating order; each call is
timed with ``perf_counter`` after ``gc.collect()`` and the table shows the median.

* A zplug call is ``with mapping.applied(model)`` + forward + ``autograd.grad`` (mapping resolved once,
  canonizers chosen by ``"auto"``, applied and undone in every call, so the first-call check of the
  rewritten attention runs in every call too: it is part of what a one-shot user pays).
* An LXT call patches torch's GELU, LayerNorm and MultiheadAttention classes with LXT's ``cp_LRP`` map,
  runs forward + ``autograd.grad`` and multiplies by the input, then restores the classes (LXT patches
  process-wide; restoring keeps the zplug and gradient variants unpatched).
* Agreement: max |R_zplug - R_LXT| / max |R_LXT| (both LRP-0 on dense layers: zplug's epsilon is 1e-12).

Needs torchvision, ``lxt==2.1`` (``pip install --no-deps``) and ``transformers`` (LXT's imports).
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CASES = ("vit_b_16:1", "vit_b_16:4")


def build(arch: str) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.02)  # torchvision initialises the head with zeros
    return model


class LXTPatch:
    """LXT's torchvision-ViT patches, applied and removed around each call."""

    def __init__(self) -> None:
        from lxt.efficient.models.vit_torch import cp_LRP

        self.patch_map = cp_LRP
        self.saved = {cls: dict(cls.__dict__) for cls in cp_LRP}

    def __enter__(self) -> None:
        from lxt.efficient import monkey_patch
        from torchvision.models import vision_transformer

        monkey_patch(vision_transformer, self.patch_map)

    def __exit__(self, *exc: object) -> None:
        for cls, saved in self.saved.items():
            for key in [k for k in cls.__dict__ if k not in saved]:
                delattr(cls, key)
            for key in ("forward",):
                setattr(cls, key, saved[key])


def variants(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    import zplug

    mapping = zplug.resolve(model, "cp_lrp", epsilon=1e-12, stabilizer=1e-12)
    patch = LXTPatch()

    def onehot(out: torch.Tensor) -> torch.Tensor:
        grad = torch.zeros_like(out)
        grad[:, 3] = 1
        return grad

    def gradient() -> torch.Tensor:
        inp = x.clone().requires_grad_()
        out = model(inp)
        return torch.autograd.grad(out, inp, onehot(out))[0]

    def ours() -> torch.Tensor:
        inp = x.clone().requires_grad_()
        with mapping.applied(model) as m:
            out = m(inp)
            return torch.autograd.grad(out, inp, onehot(out) * out.detach())[0]

    def lxt() -> torch.Tensor:
        inp = x.clone().requires_grad_()
        with patch:
            out = model(inp)
            # gradient times input: the one-hot output gradient gives relevance that sums to the logit
            return inp.detach() * torch.autograd.grad(out, inp, onehot(out))[0]

    return {"gradient": gradient, "zplug cp_lrp": ours, "LXT cp_LRP": lxt}


def timed(fn: Callable[[], torch.Tensor]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_case(case: str, rounds: int) -> list[str]:
    arch, batch = case.split(":")
    model = build(arch)
    x = torch.randn(int(batch), 3, 224, 224, generator=torch.Generator().manual_seed(1))
    calls = variants(model, x)
    relevance = {name: fn() for name, fn in calls.items()}  # warm-up, and the agreement
    lxt = relevance["LXT cp_LRP"]
    agreement = float((relevance["zplug cp_lrp"] - lxt).abs().max() / lxt.abs().max())
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(timed(calls[name]))
    median = {name: statistics.median(values) for name, values in times.items()}
    rows = []
    for name in names:
        rows.append(
            f"| {case} | {name} | {median[name]:.3f} | {median[name] / median['LXT cp_LRP']:.2f} | "
            f"{median[name] / median['gradient']:.2f} | {agreement:.1e} |"
            if name == "zplug cp_lrp"
            else f"| {case} | {name} | {median[name]:.3f} | {median[name] / median['LXT cp_LRP']:.2f} | "
            f"{median[name] / median['gradient']:.2f} | |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-transformers.md"))
    args = parser.parse_args(argv)
    torch.set_grad_enabled(True)
    lines = [
        "# zplug cp_lrp vs LXT 2.1 on torchvision ViT",
        "",
        f"`python benchmarks/bench_transformers.py --rounds {args.rounds}`; torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, float32, 224x224, "
        "random weights. Median seconds per call; ratios of medians in the same process.",
        "",
        "| case | variant | median s | / LXT | / gradient | max rel. diff to LXT |",
        "|---|---|---|---|---|---|",
    ]
    for case in args.cases.split(","):
        lines += run_case(case, args.rounds)
        print(lines[-3:], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text)
        print(text)


if __name__ == "__main__":
    main()
