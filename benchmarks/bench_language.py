"""Benchmark zplug on a Hugging Face language model against LXT 2.1 and the plain gradient, in one process.

Usage::

    python benchmarks/bench_language.py            # GPT-2 small shape at 128 and 512 tokens, memory probes, docs
    python benchmarks/bench_language.py --quick    # 2 layers, 128 tokens, 3 rounds, no memory, stdout
    python benchmarks/bench_language.py --cases 12:128 --rounds 3 --no-memory --out -

The model: ``GPT2LMHeadModel`` in GPT-2 small's shape (12 layers, hidden size 768, 12 heads, vocabulary 50257,
about 124M parameters), seeded random weights, float32, Hugging Face's default ``sdpa`` attention
(``--attention eager`` for the other), one sequence of seeded random token ids, CPU, 2 threads. A case is
``layers:tokens``.

Variants, each explaining the largest logit at the last position:

* ``gradient``: ``x * d logit / d x`` at the token embeddings, as a user writes it (``model(inputs_embeds=x)``,
  the logits of every position, ``argmax`` at the last one, ``autograd.grad``).
* ``gradient, last logits``: the same with ``logits_to_keep=1`` (the head only at the explained position),
  which is what ``explain_tokens`` does: it shows how much of the gap to the gradient is the head.
* ``zplug attnlrp`` and ``zplug cp_lrp``: ``explain_tokens(model, ids, preset=...)`` as a user calls it (the
  preset resolved, canonizers applied and undone, in every call); epsilon and stabilizer 1e-12 (LXT's are
  zero; the timing does not depend on them).
* ``LXT attnLRP`` and ``LXT cp_LRP``: LXT 2.1's efficient mode (``lxt.efficient.monkey_patch(modeling_gpt2,
  lxt.efficient.models.gpt2.attnLRP / cp_LRP)``), forward, ``argmax``, ``autograd.grad``, and ``x * grad`` at
  what enters the first layer (the token plus the position embedding: the input of ``transformer.drop``),
  summed over the hidden dimension, as the plugin's parity test reads it. LXT patches the modeling module and
  torch's ``LayerNorm`` and ``Dropout`` classes for the whole process; to interleave it with the other variants
  in one process, every LXT call snapshots what the patch changes (the modeling module's attributes, the
  attributes of every class the patch map names or the module defines, and the local mapping of
  ``ALL_ATTENTION_FUNCTIONS``), patches, runs, and restores the snapshot. The benchmark checks that zplug's and
  the gradient's results after LXT calls are bit-identical to those before, and says so.

Method, as ``bench_transformers.py``:

* Timing: every variant runs once to warm up (and for the agreement), then ``--rounds`` rounds run each variant
  once in rotating order; each call is timed with ``perf_counter`` (wall) and ``process_time`` (CPU time of all
  the process's threads) after ``gc.collect()``; the table shows medians and ratios of medians from the same
  process. On a machine shared with other processes the wall time includes waiting for a core; the CPU time
  counts the work.
* Agreement: ``max |R_zplug - R_LXT| / max |R_LXT|`` of the relevance per token.
* Memory: one fresh process per variant runs a warm-up call, trims the heap, resets the high-water mark and
  reports ``VmHWM - VmRSS`` of one call: the extra resident memory at the call's peak, with every allocation of
  64 KiB or more mapped on its own (``_measure.EXACT``), so that it is the peak of live tensors in every run.
* Environment: the timing process runs with glibc's trimming and mmap off (steady allocator) and with
  ``OMP_WAIT_POLICY=PASSIVE`` (see ``bench_transformers.py`` for why); ``--omp default`` keeps OpenMP's default.

Needs ``transformers``, ``lxt==2.1`` and the zplug-transformers plugin on the path.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from _measure import EXACT, PASSIVE, STEADY, extra_peak, probe_memory, reexec, replace_section, verdicts

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- language: written by benchmarks/bench_language.py -->", "<!-- /language -->"
CASES = ("12:128", "12:512")
QUICK_CASES = ("2:128",)
PRESETS = ("attnlrp", "cp_lrp")
LXT_NAMES = {"attnlrp": "LXT attnLRP", "cp_lrp": "LXT cp_LRP"}
LXT_VARIANTS = {"attnlrp": "attnLRP", "cp_lrp": "cp_LRP"}
GRADIENT, LEAN = "gradient", "gradient, last logits"
THREADS = 2
STABILIZER = 1e-12


# -- model -----------------------------------------------------------------------------------------
def build(layers: int, attention: str = "sdpa") -> torch.nn.Module:
    """``GPT2LMHeadModel`` in GPT-2 small's shape with ``layers`` layers and seeded random weights."""
    import transformers

    config = transformers.GPT2Config(n_layer=layers, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    config._attn_implementation = attention
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def token_ids(tokens: int) -> torch.Tensor:
    """One sequence of seeded random token ids."""
    return torch.randint(0, 50257, (1, tokens), generator=torch.Generator().manual_seed(1))


# -- LXT -------------------------------------------------------------------------------------------
class LXTPatch:
    """LXT's patch of ``modeling_gpt2`` for one variant, applied on entry and undone exactly on exit.

    ``lxt.efficient.monkey_patch`` sets class attributes (``GPT2MLP``, torch's ``LayerNorm`` and ``Dropout``),
    module attributes (``eager_attention_forward``; attnLRP replaces ``ALL_ATTENTION_FUNCTIONS``) and, for
    cp_LRP, entries of the shared ``ALL_ATTENTION_FUNCTIONS`` mapping itself. All of these are snapshotted
    once, before the first patch, and written back after each call.
    """

    def __init__(self, variant: str) -> None:
        import importlib

        from transformers.models.gpt2 import modeling_gpt2

        self.module = modeling_gpt2
        self.patch_map = getattr(importlib.import_module("lxt.efficient.models.gpt2"), variant)
        classes = {t for t in self.patch_map if isinstance(t, type)}
        classes |= {v for v in vars(modeling_gpt2).values() if isinstance(v, type)
                    and v.__module__ == modeling_gpt2.__name__}  # fmt: skip
        self.module_attributes = dict(vars(modeling_gpt2))
        self.class_attributes = {cls: dict(vars(cls)) for cls in classes}
        self.mappings = {
            id(v): (v, dict(v._local_mapping)) for v in vars(modeling_gpt2).values() if hasattr(v, "_local_mapping")
        }

    def __enter__(self) -> None:
        from lxt.efficient import monkey_patch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            monkey_patch(self.module, self.patch_map)

    def __exit__(self, *exc: object) -> None:
        _restore(vars(self.module), self.module_attributes, lambda k: delattr(self.module, k),
                 lambda k, v: setattr(self.module, k, v))  # fmt: skip
        for cls, saved in self.class_attributes.items():
            _restore(vars(cls), saved, lambda k, c=cls: delattr(c, k), lambda k, v, c=cls: setattr(c, k, v))
        for mapping, saved in self.mappings.values():
            mapping._local_mapping.clear()
            mapping._local_mapping.update(saved)


def _restore(current, saved: dict, remove: Callable, put: Callable) -> None:
    for key in [k for k in current if k not in saved]:
        remove(key)
    for key, value in saved.items():
        if key not in current or current[key] is not value:
            put(key, value)


# -- variants --------------------------------------------------------------------------------------
def variants(model: torch.nn.Module, ids: torch.Tensor, names=None) -> dict[str, Callable[[], torch.Tensor]]:
    """The timed calls by name; each returns the relevance per token ``(tokens,)``."""
    from zplug_transformers import explain_tokens

    embedding = model.get_input_embeddings()

    def gradient(**keep) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            x = embedding(ids).detach().requires_grad_()
            logits = model(inputs_embeds=x, use_cache=False, **keep).logits[:, -1]
            (grad,) = torch.autograd.grad(logits.max(-1).values.sum(), x)
            return (x.detach() * grad).sum(-1)[0]

        return call

    def ours(preset: str) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            return explain_tokens(model, ids, preset=preset, epsilon=STABILIZER, stabilizer=STABILIZER).relevance[0]

        return call

    def lxt(preset: str) -> Callable[[], torch.Tensor]:
        patch = LXTPatch(LXT_VARIANTS[preset])
        first = model.transformer.drop

        def call() -> torch.Tensor:
            entering = []
            handle = first.register_forward_pre_hook(lambda m, args: entering.append(args[0]))
            try:
                with patch:
                    x = embedding(ids).detach().requires_grad_()
                    logits = model(inputs_embeds=x, use_cache=False).logits[:, -1]
                    (grad,) = torch.autograd.grad(logits.max(-1).values.sum(), x)
            finally:
                handle.remove()
            return (entering[0].detach() * grad).sum(-1)[0]

        return call

    calls = {GRADIENT: gradient(), LEAN: gradient(logits_to_keep=1)}
    for preset in PRESETS:
        calls[f"zplug {preset}"] = ours(preset)
        calls[LXT_NAMES[preset]] = lxt(preset)
    return {name: fn for name, fn in calls.items() if names is None or name in names}


# -- measurement -----------------------------------------------------------------------------------
def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, float]:
    """Wall time and CPU time (all threads of this process) of one call."""
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def time_case(case: str, rounds: int, attention: str) -> dict:
    layers, tokens = (int(part) for part in case.split(":"))
    calls = variants(build(layers, attention), token_ids(tokens))
    names = list(calls)
    # Warm-up: everything but LXT first, then LXT (which patches and restores), then everything again.
    before = {name: calls[name]() for name in names if not name.startswith("LXT")}
    relevance = {name: calls[name]() for name in names}
    restored = all(torch.equal(before[name], relevance[name]) for name in before)
    agreement = {}
    for preset in PRESETS:
        theirs = relevance[LXT_NAMES[preset]]
        agreement[preset] = float((relevance[f"zplug {preset}"] - theirs).abs().max() / theirs.abs().max())
    del relevance, before
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            wall, used = timed(calls[name])
            times[name].append(wall)
            cpu[name].append(used)
    return {"case": case, "rounds": rounds, "times": times, "cpu": cpu, "agreement": agreement,
            "restored": restored}  # fmt: skip


def memory_probe(case: str, name: str, attention: str) -> int:
    """Peak extra resident memory (bytes) of one call of variant ``name``, in this (fresh) process."""
    layers, tokens = (int(part) for part in case.split(":"))
    call = variants(build(layers, attention), token_ids(tokens), {name})[name]
    return extra_peak(call)


def memory_case(case: str, names: list[str], attention: str) -> dict[str, float]:
    return probe_memory(__file__, {n: ["--attention", attention, "--memory-probe", case, n] for n in names}, EXACT)

def _reexec(argv: list[str], omp: str) -> None:
    """Re-execute with the steady allocator (and passive OpenMP waiting), unless that is done."""
    reexec(__file__, argv, {**STEADY, **(PASSIVE if omp == "passive" else {})})

# -- report ----------------------------------------------------------------------------------------
def _preset_of(name: str) -> str | None:
    return next((p for p in PRESETS if name in (f"zplug {p}", LXT_NAMES[p])), None)


def render(results: list[dict], meta: str, reading: tuple[str, ...] = ()) -> str:
    lines = [
        BEGIN,
        "## Language models: zplug vs LXT 2.1 and the gradient on GPT-2 (small)",
        "",
        meta,
        "",
        "| tokens | variant | wall | CPU | CPU / LXT (wall) | CPU / gradient (wall) | extra memory "
        "| max rel. diff to LXT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        memory = res.get("memory", {})
        wall = {key: statistics.median(values) for key, values in res["times"].items()}
        cpu = {key: statistics.median(values) for key, values in res["cpu"].items()}
        layers, tokens = res["case"].split(":")
        label = tokens if layers == "12" else f"{tokens} ({layers} layers)"
        for name in res["times"]:
            preset = _preset_of(name)
            bold = "**" if name.startswith("zplug") else ""
            to_lxt = "" if preset is None else (
                f"{bold}{cpu[name] / cpu[LXT_NAMES[preset]]:.2f}{bold} ({wall[name] / wall[LXT_NAMES[preset]]:.2f})"
            )
            to_gradient = f"{bold}{cpu[name] / cpu[GRADIENT]:.2f}{bold} ({wall[name] / wall[GRADIENT]:.2f})"
            agree = f"{res['agreement'][preset]:.1e}" if name.startswith("zplug") else ""
            mem = f"{memory[name]:.0f} MB" if name in memory else "-"
            lines.append(f"| {label} | {name} | {_seconds(wall[name])} | {_seconds(cpu[name])} | {to_lxt} "
                         f"| {to_gradient} | {mem} | {agree} |")  # fmt: skip
    lines += ["", *language_verdicts(results)]
    if reading:
        lines += ["", *reading]
    lines += ["", END]
    return "\n".join(lines)


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 1 else f"{value * 1e3:.0f} ms"


def language_verdicts(results: list[dict]) -> list[str]:
    """The shared verdict lines, and whether undoing LXT's patches left zplug's results bit-identical."""
    lines = verdicts(results, LXT_NAMES, lambda res: f"{res['case'].split(':')[1]} tokens")
    restored = all(res.get("restored") for res in results)
    return lines + ["", "LXT's patches undone after each call: zplug's and the gradient's results after LXT calls "
                    "are " + ("bit-identical to those before ✓." if restored else "NOT identical to those before ✗.")]


def update(doc: Path, section: str) -> None:
    """Replace the language section of ``doc`` (or append it), keeping everything else."""
    replace_section(doc, section, BEGIN, END)


def _reading(doc: Path) -> tuple[str, ...]:
    """The hand-written reading kept from the current section (everything after the ``Reading:`` line)."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else ""
    if BEGIN not in text or END not in text:
        return ()
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    marker = "\n### Reading"
    return (marker.lstrip("\n") + section.split(marker, 1)[1].rstrip("\n"),) if marker in section else ()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=None, help="comma-separated layers:tokens (default 12:128,12:512)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 5; --quick: 3)")
    parser.add_argument("--quick", action="store_true", help="2 layers, 128 tokens, 3 rounds, no memory, stdout")
    parser.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--omp", choices=("passive", "default"), default="passive")
    parser.add_argument("--out", default=None, help="markdown file whose language section is replaced, or -")
    parser.add_argument("--json", default=None, help="also write the raw times as JSON")
    parser.add_argument("--render", metavar="JSON", help="write the section from a --json file of an earlier run")
    parser.add_argument("--memory-probe", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    torch.set_grad_enabled(True)
    warnings.simplefilter("ignore")
    if args.memory_probe:
        print(json.dumps({"bytes": memory_probe(*args.memory_probe, args.attention)}))
        return 0
    out = args.out or ("-" if args.quick else str(DOC))
    reading = () if out == "-" else _reading(Path(out))
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        section = render(saved["results"], saved["meta"], reading)
        update(Path(out), section) if out != "-" else print(section)
        return 0
    _reexec(sys.argv[1:] if argv is None else list(argv), args.omp)
    cases = (args.cases or ",".join(QUICK_CASES if args.quick else CASES)).split(",")
    rounds = args.rounds or (3 if args.quick else 5)
    results = []
    for case in cases:
        res = time_case(case, rounds, args.attention)
        if not (args.no_memory or args.quick):
            res["memory"] = memory_case(case, list(res["times"]), args.attention)
        results.append(res)
        print(render([res], "").split("\n", 6)[-1], file=sys.stderr, flush=True)
    import transformers

    meta = (
        f"`python benchmarks/bench_language.py`: GPT-2 small's shape ({', '.join(cases)} as layers:tokens; 124M "
        f"parameters at 12 layers), random weights, float32, batch 1, `{args.attention}` attention; torch "
        f"{torch.__version__}, transformers {transformers.__version__}, {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads; {rounds} interleaved "
        f"rounds, medians; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}, steady allocator for "
        "timing, extra resident memory at the peak of one call in a fresh process (see the script's docstring)."
    )
    section = render(results, meta, reading)
    print(section)
    if out != "-":
        update(Path(out), section)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
