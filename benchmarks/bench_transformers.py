"""Benchmark zplug's attnlrp and cp_lrp against LXT 2.1 on torchvision's vit_b_16, in one process, interleaved.

Usage::

    python benchmarks/bench_transformers.py            # vit_b_16 at batch 1 and 8, memory probes, writes docs
    python benchmarks/bench_transformers.py --quick    # a 4-layer vit_b_16 at batch 1, 3 rounds, no memory, stdout
    python benchmarks/bench_transformers.py --cases vit_b_16:1 --rounds 3 --no-memory --out -

Method, as ``bench.py``:

* Timing: every variant runs once to warm up (and for the agreement), then ``--rounds`` rounds (``--rounds-large``
  for batches above 1) run each variant once in rotating order; each call is timed with ``perf_counter`` (wall)
  and ``process_time`` (CPU time of all the process's threads) after ``gc.collect()``; the table shows medians
  and ratios of medians from the same process. On a machine shared with other processes the wall time
  includes waiting for a core; the CPU time counts the work (passive OpenMP threads use none while waiting).
* Variants: the plain input gradient ``autograd.grad(logits, x, onehot)``; zplug ``attnlrp`` and ``cp_lrp``
  (``with mapping.applied(model)`` + forward + ``autograd.grad``; the mapping resolved once, canonizers
  ``"auto"``, applied and undone in every call); LXT's ``cp_LRP`` map for torchvision's ViT, and an AttnLRP map
  assembled from LXT's own parts (its GELU and LayerNorm patches, and a ``MultiheadAttention`` forward that
  divides the gradients of query and key by 4 and of value by 2 with LXT's ``divide_gradient``, as LXT does for
  its HuggingFace models; LXT ships no AttnLRP map for torchvision). An LXT call patches the classes, runs
  forward + ``autograd.grad``, multiplies by the input and restores the classes (LXT patches process-wide).
* Agreement: max |R_zplug - R_LXT| / max |R_LXT|; both are LRP-0 on dense layers (zplug's epsilon and
  stabilizer are 1e-12 here).
* Memory: one fresh process per variant runs a warm-up call, trims the heap, resets the high-water mark and
  reports ``VmHWM - VmRSS`` of one call, with every allocation of 64 KiB or more mapped on its own
  (``_measure.EXACT``), so that it is the peak of live tensors, the same in every run.
* Environment: the timing process runs with glibc's trimming and mmap off (``bench.py``'s ``--allocator
  steady``) and with ``OMP_WAIT_POLICY=PASSIVE``. On a machine whose cores are shared with other processes,
  OpenMP's default spin-waiting makes every parallel operator wait for a second thread that the scheduler has
  not run yet: each element-wise operator above torch's grain size then costs a time slice (about 8 ms here,
  whatever its size), and the timings count operators instead of work. Passive waiting measures the work;
  ``--omp default`` keeps the default.

Needs torchvision, ``lxt==2.1`` (``pip install --no-deps``) and ``transformers`` (LXT's imports).
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
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from _measure import EXACT, PASSIVE, STEADY, extra_peak, probe_memory, reexec, replace_section, verdicts

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- transformers: written by benchmarks/bench_transformers.py -->", "<!-- /transformers -->"
CASES = ("vit_b_16:1", "vit_b_16:8")
QUICK_CASES = ("vit_l4:1",)
GRADIENT_FORM = ", gradient form"
#: zplug's variants (a preset, in relevance or gradient form) and the LXT map each is compared with.
LXT_NAMES = {
    "attnlrp": "LXT AttnLRP", "cp_lrp": "LXT cp_LRP",
    f"attnlrp{GRADIENT_FORM}": "LXT AttnLRP", f"cp_lrp{GRADIENT_FORM}": "LXT cp_LRP",
}  # fmt: skip
PRESETS = tuple(LXT_NAMES)


# -- models ----------------------------------------------------------------------------------------
def build(arch: str) -> torch.nn.Module:
    """``vit_b_16`` (random weights), or ``vit_l4``: the same with 4 encoder layers (for quick runs)."""
    from torchvision.models import vision_transformer

    torch.manual_seed(0)
    if arch == "vit_l4":
        model = vision_transformer.VisionTransformer(
            image_size=224, patch_size=16, num_layers=4, num_heads=12, hidden_dim=768, mlp_dim=3072
        )
    else:
        model = getattr(vision_transformer, arch)(weights=None)
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.02)  # torchvision initialises the head with zeros
    return model.eval()


def build_input(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))


# -- LXT -------------------------------------------------------------------------------------------
def _lxt_attnlrp_attention(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                           average_attn_weights=True, is_causal=False):
    """Self-attention without masks (as in torchvision's ViT), with LXT's uniform rule on its products.

    ``q @ k^T`` gives each operand half (the softmax rule is its gradient), ``attn @ v`` gives ``attn``
    and ``v`` half each: query and key get a quarter, value a half, as in LXT's HuggingFace attention wrapper.
    """
    from lxt.efficient.rules import divide_gradient

    if key_padding_mask is not None or attn_mask is not None or not self.batch_first:
        raise NotImplementedError("benchmark attention: batch_first self-attention without masks only")
    n, length, embed = query.shape
    weight, bias = self.in_proj_weight, self.in_proj_bias

    def heads(x: torch.Tensor, i: int) -> torch.Tensor:
        part = slice(i * embed, (i + 1) * embed)
        return F.linear(x, weight[part], bias[part]).reshape(n, -1, self.num_heads, self.head_dim).transpose(1, 2)

    q = divide_gradient(heads(query, 0), 4)
    k = divide_gradient(heads(key, 1), 4)
    v = divide_gradient(heads(value, 2), 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return self.out_proj(out.transpose(1, 2).reshape(n, length, embed)), None


def lxt_map(preset: str) -> dict:
    """LXT's patch map for torchvision's ViT: its own ``cp_LRP``, or AttnLRP from its parts."""
    from functools import partial

    from lxt.efficient.models.vit_torch import cp_LRP
    from lxt.efficient.patches import layer_norm_forward, non_linear_forward, patch_method
    from torchvision.models import vision_transformer as vt

    if preset == "cp_lrp":
        return cp_LRP
    return {
        vt.nn.GELU: partial(patch_method, non_linear_forward, keep_original=True),
        vt.nn.LayerNorm: partial(patch_method, layer_norm_forward),
        vt.nn.MultiheadAttention: partial(patch_method, _lxt_attnlrp_attention),
    }


class LXTPatch:
    """LXT's class patches, applied and removed around each call."""

    def __init__(self, preset: str) -> None:
        self.patch_map = lxt_map(preset)
        self.saved = {cls: dict(cls.__dict__) for cls in self.patch_map}

    def __enter__(self) -> None:
        from lxt.efficient import monkey_patch
        from torchvision.models import vision_transformer

        monkey_patch(vision_transformer, self.patch_map)

    def __exit__(self, *exc: object) -> None:
        for cls, saved in self.saved.items():
            for key in [k for k in cls.__dict__ if k not in saved]:
                delattr(cls, key)
            cls.forward = saved["forward"]


# -- variants --------------------------------------------------------------------------------------
def _onehot(out: torch.Tensor) -> torch.Tensor:
    grad = torch.zeros_like(out)
    grad[:, 3] = 1
    return grad


def variants(model: torch.nn.Module, x: torch.Tensor, presets=PRESETS) -> dict[str, Callable[[], torch.Tensor]]:
    """The timed calls by name: the gradient, then zplug and LXT per preset."""
    import zplug

    def gradient() -> torch.Tensor:
        inp = x.clone().requires_grad_()
        out = model(inp)
        return torch.autograd.grad(out, inp, _onehot(out))[0]

    def ours(mapping, form: str) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            inp = x.clone().requires_grad_()
            with mapping.applied(model, form=form) as m:
                out = m(inp)
                return torch.autograd.grad(out, inp, _onehot(out) * out.detach())[0]

        return call

    def lxt(patch: LXTPatch) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            inp = x.clone().requires_grad_()
            with patch:
                out = model(inp)
                # gradient times input: the one-hot output gradient gives relevance that sums to the logit
                return inp.detach() * torch.autograd.grad(out, inp, _onehot(out))[0]

        return call

    calls = {"gradient": gradient}
    for variant in presets:
        preset, gradient_form = variant.removesuffix(GRADIENT_FORM), variant.endswith(GRADIENT_FORM)
        # Gradient form with no stabiliser (LRP-0, as LXT), relevance form with 1e-12 (a zero would divide by zero).
        epsilon = 0.0 if gradient_form else 1e-12
        mapping = zplug.resolve(model, preset, epsilon=epsilon, stabilizer=epsilon)
        calls[f"zplug {variant}"] = ours(mapping, "gradient" if gradient_form else "relevance")
        if LXT_NAMES[variant] not in calls:
            calls[LXT_NAMES[variant]] = lxt(LXTPatch(preset))
    return calls


# -- measurement -----------------------------------------------------------------------------------
def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, float]:
    """Wall time and CPU time (all threads of this process) of one call."""
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def time_case(case: str, rounds: int) -> dict:
    arch, batch = case.split(":")
    calls = variants(build(arch), build_input(int(batch)))
    relevance = {name: fn() for name, fn in calls.items()}  # warm-up, and the agreement
    agreement = {}
    for preset in PRESETS:
        theirs = relevance[LXT_NAMES[preset]]
        agreement[preset] = float((relevance[f"zplug {preset}"] - theirs).abs().max() / theirs.abs().max())
    del relevance
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            wall, used = timed(calls[name])
            times[name].append(wall)
            cpu[name].append(used)
    return {"case": case, "rounds": rounds, "times": times, "cpu": cpu, "agreement": agreement}


def memory_probe(case: str, name: str) -> int:
    """Peak extra resident memory (bytes) of one call of variant ``name``, in this (fresh) process."""
    arch, batch = case.split(":")
    presets = tuple(p for p in PRESETS if name in (f"zplug {p}", LXT_NAMES[p]))
    call = variants(build(arch), build_input(int(batch)), presets)[name]
    return extra_peak(call)


def memory_case(case: str, names: list[str]) -> dict[str, float]:
    return probe_memory(__file__, {n: ["--memory-probe", case, n] for n in names}, EXACT)

def _reexec(argv: list[str], omp: str) -> None:
    """Re-execute with the steady allocator (and passive OpenMP waiting), unless that is done."""
    reexec(__file__, argv, {**STEADY, **(PASSIVE if omp == "passive" else {})})

# -- report ----------------------------------------------------------------------------------------
def render(results: list[dict], meta: str) -> str:
    lines = [
        BEGIN,
        "## Transformers: zplug vs LXT 2.1 on torchvision's ViT",
        "",
        meta,
        "",
        "| case | variant | wall | / LXT | / gradient | CPU | / LXT | / gradient | extra memory "
        "| max rel. diff to LXT |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        memory = res.get("memory", {})
        for name in res["times"]:
            preset = next((p for p in PRESETS if name in (f"zplug {p}", LXT_NAMES[p])), None)
            bold = "**" if name.startswith("zplug") else ""
            cells = []
            for kind in ("times", "cpu"):
                median = {key: statistics.median(values) for key, values in res[kind].items()}
                lxt = "" if preset is None else f"{bold}{median[name] / median[LXT_NAMES[preset]]:.2f}{bold}"
                cells += [f"{median[name] * 1e3:.0f} ms", lxt, f"{bold}{median[name] / median['gradient']:.2f}{bold}"]
            agree = f"{res['agreement'][preset]:.1e}" if name.startswith("zplug") else ""
            mem = f"{memory[name]:.0f} MB" if name in memory else "-"
            lines.append(f"| {res['case']} | {name} | {' | '.join(cells)} | {mem} | {agree} |")
    lines += ["", *verdicts(results, LXT_NAMES, lambda res: res["case"]), "", *READING, "", END]
    return "\n".join(lines)


READING = (
    "Reading: LXT's relevance is the input times a gradient whose local derivatives it changes (GELU's by "
    "out/in, LayerNorm's with the standard deviation detached, query and key stopped for CP-LRP or divided "
    "for AttnLRP); dense layers and residual sums keep their plain gradient, because LRP-0 is input × "
    "gradient there. zplug computes the same relevance in two ways. In relevance form (the default, Zennit's "
    "numbers for any epsilon; here epsilon 1e-12) every dense layer and residual sum divides the relevance by "
    "its stabilised stored output and multiplies by its input, about five element-wise passes a gradient does "
    "not make, and keeps its output for that. In gradient form (`form=\"gradient\"`, here with epsilon 0, which "
    "is LRP-0 as in LXT) the backward pass carries relevance divided by the activation: dense layers, sums and "
    "the softmax then keep their own gradient, with no rule node and nothing kept beyond what autograd keeps, "
    "and only LayerNorm, GELU and attention run rules, as in LXT.",
    "",
    "Attention: both presets give each layer's attention module the `fused_attention` rule, which runs torch's "
    "fused attention kernel in the forward pass and differentiates the kernel's own graph in the backward pass "
    "(q, k, v, the output and one log-sum-exp per row are kept; no 197 × 197 tensor per head), with AttnLRP's "
    "quarter/quarter/half shares or everything to the value for CP-LRP. The `recompute` rule that preceded it "
    "kept only q, k and v but ran the explicit attention again in the backward pass (4-9 % more time at "
    "batch 1); explicit scores and weights kept for the backward pass cost about 360 MB more at batch 8.",
    "",
    "Memory is the peak of live tensors (every allocation of 64 KiB or more mapped on its own, see the script). "
    "Relevance form keeps what the residual sums' and dense layers' rules divide by (the branch outputs of "
    "the residual sums, two batch × 197 × 768 tensors per layer); gradient form keeps what LXT keeps. With "
    "glibc's default allocator the same call's resident peak moved by up to 150 MB between processes.",
    "",
    "Agreement: differences to LXT are float32 round-off (both forms, same formulas); at batch 8 one image of "
    "the eight can differ more where outputs are near zero. The machine is a shared 2-core VM with other jobs "
    "running: wall times include waiting for a core and vary by ±20 % between runs, and CPU times by about "
    "±5 %, so ratios within that of 1.0 are ties; the profile of the work besides the matrix products "
    "(same in all variants) is steadier.",
)


def update(doc: Path, section: str) -> None:
    """Replace the transformer section of ``doc`` (or append it), keeping everything else."""
    replace_section(doc, section, BEGIN, END)

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=None, help="comma-separated arch:batch (vit_b_16, vit_l4)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds at batch 1 (default 5; --quick: 3)")
    parser.add_argument("--rounds-large", type=int, default=3, help="rounds at larger batches")
    parser.add_argument("--quick", action="store_true", help="vit_l4 at batch 1, 3 rounds, no memory, stdout")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--omp", choices=("passive", "default"), default="passive")
    parser.add_argument("--out", default=None, help="markdown file whose transformer section is replaced, or -")
    parser.add_argument("--json", default=None, help="also write the raw times as JSON")
    parser.add_argument("--render", metavar="JSON", help="write the section from a --json file of an earlier run")
    parser.add_argument("--memory-probe", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(True)
    if args.memory_probe:
        print(json.dumps({"bytes": memory_probe(*args.memory_probe)}))
        return 0
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        section = render(saved["results"], saved["meta"])
        update(Path(args.out or DOC), section) if args.out != "-" else print(section)
        return 0
    _reexec(sys.argv[1:] if argv is None else list(argv), args.omp)
    cases = (args.cases or ",".join(QUICK_CASES if args.quick else CASES)).split(",")
    rounds = args.rounds or (3 if args.quick else 5)
    out = args.out or ("-" if args.quick else str(DOC))
    results = []
    for case in cases:
        res = time_case(case, rounds if case.endswith(":1") else args.rounds_large)
        if not (args.no_memory or args.quick):
            res["memory"] = memory_case(case, list(res["times"]))
        results.append(res)
        print(render([res], "").split("\n", 6)[-1], file=sys.stderr, flush=True)
    meta = (
        f"`python benchmarks/bench_transformers.py`: torch {torch.__version__}, {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads, float32, 224×224, "
        f"random weights; {rounds} interleaved rounds at batch 1, {args.rounds_large} at batch 8; median wall time; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}, steady allocator for timing, "
        "extra resident memory at the peak of one call in a fresh process (see the script's docstring)."
    )
    section = render(results, meta)
    if out == "-":
        print(section)
    else:
        update(Path(out), section)
        print(section)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
