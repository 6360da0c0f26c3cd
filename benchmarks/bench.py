"""Benchmark zplug against Zennit 0.5.1 (and a plain gradient) in one process, interleaved.

Usage::

    python benchmarks/bench.py                      # every case, 5 rounds, memory probes, writes docs/benchmarks.md
    python benchmarks/bench.py --cases mlp:1,vgg16:1 --rounds 3 --no-memory --out -

Method (see docs/benchmarks.md for the discussion):

* Timing: for each case, every variant (gradient, then zplug and Zennit for each preset) is run once to
  warm up; then ``--rounds`` rounds run every variant once, rotating the order each round
  (A B C, B C A, ...), so drift and after-effects spread over all variants. Each call is timed
  with ``perf_counter`` after ``gc.collect()``; the table shows the median.
* A zplug call is ``with mapping.applied(model)`` + forward + ``autograd.grad`` (the mapping is resolved
  once, as a user would); a Zennit call is ``with composite.context(model)`` + forward + ``autograd.grad``.
  Both request the input relevance only, with the one-hot output (times the logit) as output relevance.
  The gradient baseline is ``autograd.grad(logits, x, onehot)``.
* Memory: one fresh subprocess per variant runs one warm-up call, trims the heap (``malloc_trim``),
  resets the kernel's high-water mark (``/proc/self/clear_refs``), runs one call and reports
  ``VmHWM - VmRSS`` before the call: the extra resident memory the call needed at its peak.
* Agreement: max |R_zplug - R_zennit| / max |R_zennit| on the same model and input.
* Allocator: with ``--allocator steady`` (the default) the timing process runs with glibc's heap trimming
  and mmap allocations switched off (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_MAX_=0``; the script
  re-executes itself with them), the same for every variant. Otherwise each call gets fresh pages from the
  kernel for much of its memory, and zeroing them (hundreds of thousands of page faults per call at batch
  8) adds 10-30 % to every variant, varying with the heap's history; ``--allocator default`` measures that
  way. Memory probes always use the default allocator.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _measure import STEADY, extra_peak, probe_memory

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("epsilon_gamma_box", "epsilon_plus_flat", "epsilon_alpha2_beta1", "epsilon")
DEFAULT_CASES = ("mlp:1", "mlp:256", "vgg16:1", "resnet50:1", "vgg16:8", "resnet50:8")
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
EPSILON_PRESET = ROOT / "benchmarks" / "epsilon.toml"


# -- models --------------------------------------------------------------------------------------
def build_model(arch: str) -> torch.nn.Module:
    """Random-weight model with randomised BatchNorm statistics (fixed seed)."""
    torch.manual_seed(0)
    if arch == "mlp":
        model = torch.nn.Sequential(
            torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
            torch.nn.Linear(1024, 10),
        )  # fmt: skip
    else:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            # Zennit 0.5.1 keeps eps in the BatchNorm it turns into an identity, which moves its relevance
            # by ~1e-3 (docs/zennit-differences.md); a negligible eps makes the agreement column meaningful.
            module.eps = 1e-30
    return model.eval()


def build_input(arch: str, batch: int) -> torch.Tensor:
    torch.manual_seed(1)
    if arch == "mlp":
        return torch.randn(batch, 1024)
    return ((torch.rand(batch, 3, 224, 224) - IMAGENET_MEAN) / IMAGENET_STD).contiguous()


def bounds(arch: str) -> dict[str, torch.Tensor | float]:
    if arch == "mlp":
        return {"low": -4.0, "high": 4.0}
    return {"low": (0 - IMAGENET_MEAN) / IMAGENET_STD, "high": (1 - IMAGENET_MEAN) / IMAGENET_STD}


# -- variants --------------------------------------------------------------------------------------
def output_relevance(output: torch.Tensor) -> torch.Tensor:
    onehot = torch.zeros_like(output)
    onehot[torch.arange(len(output)), output.argmax(1)] = 1
    return output * onehot


def gradient_call(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def call() -> torch.Tensor:
        inp = x.detach().requires_grad_()
        out = model(inp)
        onehot = torch.zeros_like(out)
        onehot[torch.arange(len(out)), out.argmax(1)] = 1
        (grad,) = torch.autograd.grad(out, inp, onehot)
        return grad

    return call


def lrp_call(hooked_model: Callable[[], Any], x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One LRP call: enter ``hooked_model()`` (a context yielding the model), forward, input relevance."""

    def call() -> torch.Tensor:
        inp = x.detach().requires_grad_()
        with hooked_model() as hooked:
            out = hooked(inp)
            (rel,) = torch.autograd.grad(out, inp, output_relevance(out))
        return rel

    return call


def zplug_call(model: torch.nn.Module, x: torch.Tensor, arch: str, preset: str) -> Callable[[], torch.Tensor]:
    import zplug

    name = str(EPSILON_PRESET) if preset == "epsilon" else preset
    params = bounds(arch) if preset == "epsilon_gamma_box" else {}
    mapping = zplug.resolve(model, name, **params)

    return lrp_call(lambda: mapping.applied(model), x)


def zennit_call(model: torch.nn.Module, x: torch.Tensor, arch: str, preset: str) -> Callable[[], torch.Tensor]:
    from zennit.composites import COMPOSITES, LayerMapComposite, layer_map_base
    from zennit.rules import Epsilon
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer
    from zennit.types import Convolution

    canonizers = [ResNetCanonizer()] if arch.startswith("resnet") else [VGGCanonizer()] if arch != "mlp" else []
    if preset == "epsilon":
        layer_map = layer_map_base() + [(Convolution, Epsilon()), (torch.nn.Linear, Epsilon())]
        composite = LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    else:
        params = bounds(arch) if preset == "epsilon_gamma_box" else {}
        composite = COMPOSITES[preset](canonizers=canonizers, **params)

    return lrp_call(lambda: composite.context(model), x)


def make_variants(arch: str, batch: int, presets: tuple[str, ...]) -> dict[str, Callable[[], torch.Tensor]]:
    model, x = build_model(arch), build_input(arch, batch)
    variants = {"gradient": gradient_call(model, x)}
    for preset in presets:
        variants[f"zplug {preset}"] = zplug_call(model, x, arch, preset)
        variants[f"zennit {preset}"] = zennit_call(model, x, arch, preset)
    return variants


# -- measurement --------------------------------------------------------------------------------------
def time_case(variants: dict[str, Callable[[], torch.Tensor]], rounds: int) -> dict[str, list[float]]:
    names = list(variants)
    for name in names:  # warm-up
        variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            gc.collect()
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def agreement(variants: dict[str, Callable[[], torch.Tensor]], presets: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for preset in presets:
        ours, theirs = variants[f"zplug {preset}"](), variants[f"zennit {preset}"]()
        out[preset] = float((ours - theirs).abs().max() / theirs.abs().max().clamp(min=1e-30))
    return out


def memory_probe(arch: str, batch: int, variant: str) -> int:
    """Peak extra resident memory (bytes) of one call, measured in this (fresh) process."""
    presets = tuple(p for p in PRESETS if variant.endswith(" " + p))
    variants = make_variants(arch, batch, presets)
    call = variants[variant]
    return extra_peak(call)




def _steady_allocator_active() -> bool:
    return all(os.environ.get(k) == v for k, v in STEADY.items())


def _steady_allocator(argv: list[str]) -> None:
    """Re-execute this script with glibc's trimming and mmap off, unless that is done (or not glibc)."""
    if platform.libc_ver()[0] != "glibc" or _steady_allocator_active():
        return
    os.execve(sys.executable, [sys.executable, __file__, *argv], {**os.environ, **STEADY})


def memory_case(arch: str, batch: int, names: list[str]) -> dict[str, float]:
    return probe_memory(__file__, {n: ["--memory-probe", f"{arch}:{batch}", n] for n in names},
                        env={"PYTHONPATH": str(ROOT)})

# -- report --------------------------------------------------------------------------------------
def render(results: list[dict], meta: dict) -> str:
    lines = [
        "# Benchmarks: zplug vs Zennit 0.5.1",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['threads']} threads; "
        f"{meta['rounds']} interleaved rounds per case after one warm-up call each; median wall time; "
        f"allocator: {meta['allocator']}.",
        "Produced by `make bench` (`benchmarks/bench.py`); see the script's docstring for the method.",
        "",
        "| case | preset | zplug | Zennit | zplug / Zennit | zplug / gradient | Zennit / gradient "
        "| zplug mem | Zennit mem | gradient mem | max rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        grad = statistics.median(res["times"]["gradient"])
        for preset in res["presets"]:
            ours = statistics.median(res["times"][f"zplug {preset}"])
            theirs = statistics.median(res["times"][f"zennit {preset}"])
            mem = res.get("memory", {})
            lines.append(
                f"| {res['case']} | {preset} | {_fmt_time(ours)} | {_fmt_time(theirs)} | **{ours / theirs:.2f}** | "
                f"{ours / grad:.2f} | {theirs / grad:.2f} | {_fmt_mem(mem, f'zplug {preset}')} | "
                f"{_fmt_mem(mem, f'zennit {preset}')} | {_fmt_mem(mem, 'gradient')} | {res['agreement'][preset]:.1e} |"
            )
        lines.append(f"| {res['case']} | (gradient) | {_fmt_time(grad)} | | | 1 | | | | | |")
    return "\n".join(lines) + "\n"


def _fmt_mem(memory: dict[str, float], name: str) -> str:
    value = memory.get(name)
    return "-" if value is None else f"{value:.0f} MB"


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated arch:batch")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown file, or - for stdout")
    parser.add_argument("--json", default=None, help="also write raw results as JSON")
    parser.add_argument(
        "--allocator", choices=("steady", "default"), default="steady",
        help="steady: time with glibc's heap trimming and mmap off (see the docstring); default: as configured",
    )  # fmt: skip
    parser.add_argument("--memory-probe", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_probe:
        arch, batch = args.memory_probe[0].split(":")
        print(json.dumps({"bytes": memory_probe(arch, int(batch), args.memory_probe[1])}))
        return 0
    if args.allocator == "steady":
        _steady_allocator(sys.argv[1:] if argv is None else list(argv))

    presets = tuple(p for p in args.presets.split(",") if p)
    results = []
    for case in args.cases.split(","):
        arch, batch = case.split(":")
        variants = make_variants(arch, int(batch), presets)
        res = {"case": case, "presets": presets, "agreement": agreement(variants, presets)}
        res["times"] = time_case(variants, args.rounds)
        del variants
        gc.collect()
        if not args.no_memory:
            res["memory"] = memory_case(arch, int(batch), list(res["times"]))
        results.append(res)
        print(render([res], _meta(args)).split("\n", 7)[-1], flush=True)
    text = render(results, _meta(args))
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text + _notes())
        print(f"wrote {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _meta(args: argparse.Namespace) -> dict:
    return {
        "machine": f"{os.cpu_count()} CPU cores ({_cpu_name()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "allocator": _allocator_description(args.allocator),
    }


def _allocator_description(choice: str) -> str:
    if choice == "steady" and _steady_allocator_active():
        return "glibc with heap trimming and mmap off for every variant (`--allocator steady`)"
    return "as configured (`--allocator default`)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _notes() -> str:
    path = ROOT / "benchmarks" / "NOTES.md"
    kept = "".join(_kept_section(script) for script in ("startup", "evaluate", "bench_transformers", "bench_language"))
    return ("\n" + path.read_text() if path.exists() else "") + kept


def _kept_section(script: str) -> str:
    """The section that ``benchmarks/<script>.py`` wrote into docs/benchmarks.md (between its markers), kept as is."""
    module = importlib.import_module(script)
    begin, end = module.BEGIN, module.END
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text(encoding="utf-8") if doc.exists() else ""
    if begin not in text or end not in text:
        return ""
    return "\n" + begin + text.split(begin, 1)[1].split(end, 1)[0] + end + "\n"


if __name__ == "__main__":
    sys.exit(main())
