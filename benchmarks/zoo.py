"""Every classification model in ``torchvision.models``: does zplug conserve, or say what it cannot cover?

Usage::

    python benchmarks/zoo.py                         # all 80 models; writes docs/torchvision-zoo.md
    python benchmarks/zoo.py --models resnet18 regnet_y_400mf --out -   # print only

Each model is built with seeded random weights in float64 (weights ~ N(0, 2 / fan_in), norm scales
in [0.5, 1.5], BatchNorm variances in [0.5, 1.5]) and every additive constant set to zero (biases,
BatchNorm means, position embeddings, class tokens, relative-position biases), so the network has
no additive constant: every rule that conserves layer by layer must give an input relevance that
sums to the target's relevance (1, the one-hot target). Stabilisers are 1e-12.

Presets: CNNs run ``benchmarks/epsilon.toml`` (LRP-epsilon on every convolution and dense layer)
and ``epsilon_plus`` (z+ on convolutions); vision transformers (ViT, Swin, MaxViT, ConvNeXt) run
``cp_lrp``. A run is

* ``conserves`` when the relevance sums to 1 within 1e-6 relative and nothing was uncovered
  (``conserves, warns`` if it sums to 1 but zplug warned);
* ``warns`` when zplug emitted a CoverageWarning (the uncovered operations are named);
* ``lossy (noted)`` when the mapping's coverage section lists a rule that loses relevance on layers
  whose output is not rectified (z+ after a linear bottleneck) -- documented, not a failure;
* ``SILENT FAILURE`` otherwise: wrong relevance and no word about it. There must be none.

``plugins/zplug-torchvision/tests/test_zoo.py`` runs the same check (a subset in ``make test``,
all models in ``make test-zoo``).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import attrs
import torch

HERE = Path(__file__).resolve().parent
EPSILON_PRESET = HERE / "epsilon.toml"
STABILIZER = 1e-12
TOLERANCE = 1e-6
#: Parameters that are additive constants (zeroed), by the end of their name.
CONSTANTS = ("bias", "pos_embedding", "class_token", "relative_position_bias_table")
#: Model families explained with the transformer preset.
TRANSFORMERS = ("vit_", "swin_", "maxvit_", "convnext_")


def is_transformer(name: str) -> bool:
    return name.startswith(TRANSFORMERS)


def model_names() -> list[str]:
    import torchvision.models

    return sorted(torchvision.models.list_models(module=torchvision.models))


def input_size(name: str) -> int:
    if name.startswith("inception"):
        return 80  # the smallest size its stride-2 stages accept is 75
    if name.startswith("maxvit"):
        return 224  # its partition size (7) must divide every stage's feature map
    if name == "vit_h_14":
        return 56
    return 64


def build(name: str) -> torch.nn.Module:
    """The model with seeded random weights, float64, no additive constants, evaluation mode."""
    import torchvision.models

    kwargs: dict = {"weights": None, "num_classes": 10}
    if name in ("inception_v3", "googlenet"):
        kwargs.update(aux_logits=False, init_weights=False)
    if name.startswith("vit_"):
        kwargs["image_size"] = input_size(name)
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, **kwargs).double().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(CONSTANTS):
                p.zero_()
            elif p.ndim == 1 or "layer_scale" in pname:  # norm scales and layer scales
                p.uniform_(0.5, 1.5, generator=generator)
            else:
                p.normal_(0, math.sqrt(2.0 / max(p[0].numel(), 1)), generator=generator)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.zero_()
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model


@attrs.frozen
class Run:
    """One preset on one model."""

    preset: str
    total: float | None  # the relevance sum (the target's relevance is 1)
    status: str  # conserves, warns, lossy (noted), SILENT FAILURE, error
    detail: str = ""


@attrs.frozen
class Row:
    """One model."""

    model: str
    canonizers: str
    runs: tuple[Run, ...]
    seconds: float

    @property
    def silent(self) -> bool:
        return any(run.status == "SILENT FAILURE" for run in self.runs)


def check(model: torch.nn.Module, x: torch.Tensor, preset: str, label: str) -> tuple[Run, object]:
    """Explain class 3 of ``x`` with ``preset``; judge the relevance sum and the warnings."""
    import zplug

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            e = zplug.explain(model, x, target=3, preset=preset, epsilon=STABILIZER, stabilizer=STABILIZER)
        except zplug.ZplugError as exc:
            return Run(label, None, "error", str(exc).splitlines()[0][:200]), None
    coverage = [str(w.message) for w in record if issubclass(w.category, zplug.CoverageWarning)]
    total = float(e.relevance.sum())
    if not math.isfinite(total):
        status = "warns" if coverage else "SILENT FAILURE"
    elif abs(total - 1.0) <= TOLERANCE:
        status = "conserves, warns" if coverage else "conserves"
    elif coverage:
        status = "warns"
    elif e.mapping.coverage is not None and e.mapping.coverage.lossy:
        status = "lossy (noted)"
    else:
        status = "SILENT FAILURE"
    detail = "; ".join(coverage[:2]) + (f" (+{len(coverage) - 2} more)" if len(coverage) > 2 else "")
    return Run(label, total, status, detail), e.mapping


def run_model(name: str) -> Row:
    start = time.perf_counter()
    model = build(name)
    size = input_size(name)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    presets = [("cp_lrp", "cp_lrp")] if is_transformer(name) else [
        (str(EPSILON_PRESET), "epsilon"), ("epsilon_plus", "epsilon_plus")
    ]
    runs, canonizers = [], "?"
    for preset, label in presets:
        run, mapping = check(model, x, preset, label)
        runs.append(run)
        if mapping is not None:
            canonizers = ", ".join(c.name for c in mapping.canonizers) or "none"
    return Row(name, canonizers, tuple(runs), time.perf_counter() - start)


def table(rows: list[Row]) -> str:
    lines = [
        "| model | canonizers (auto) | preset | relevance sum | \\|sum - 1\\| | result | what zplug said |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for i, run in enumerate(row.runs):
            total = "-" if run.total is None else f"{run.total:.9f}"
            gap = "-" if run.total is None else f"{abs(run.total - 1.0):.1e}"
            first = (row.model, row.canonizers) if i == 0 else ("", "")
            detail = run.detail.replace("|", "\\|")
            lines.append(f"| {first[0]} | {first[1]} | {run.preset} | {total} | {gap} | {run.status} | {detail} |")
    return "\n".join(lines)


def document(rows: list[Row]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        for run in row.runs:
            counts[run.status] = counts.get(run.status, 0) + 1
    summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    return f"""# torchvision's classification models

Generated by `python benchmarks/zoo.py` (torch {torch.__version__}, {platform.machine()}); the
check itself is `plugins/zplug-torchvision/tests/test_zoo.py` (`make test-zoo` runs every model).

Every model in `torchvision.models` with seeded random weights in float64 and no additive
constants (biases, BatchNorm means, position embeddings, class tokens and relative-position
biases are zero), one {input_size('resnet18')}x{input_size('resnet18')} input (80 for
inception_v3, 224 for MaxViT, 56 for vit_h_14), target class 3, `canonizers = "auto"`,
stabilisers 1e-12. Without additive constants, a rule that conserves layer by layer gives an
input relevance that sums to 1 (the one-hot target).

CNNs run `benchmarks/epsilon.toml` (LRP-epsilon on every convolution and dense layer) and
`epsilon_plus` (z+ on convolutions); the vision transformers run `cp_lrp`. **conserves**: the sum
is 1 within 1e-6 relative. **warns**: zplug said which operations it could not cover (a
`CoverageWarning`). **lossy (noted)**: z+ on convolutions whose output is not rectified (linear
bottlenecks, ShuffleNet's channel split) loses relevance by design; the mapping's coverage section
lists those layers. **SILENT FAILURE** would be wrong relevance without a word; there is none.

Totals: {summary}.

{table(rows)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="model names (default: all)")
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "torchvision-zoo.md"),
                        help="markdown file to write, or - for standard output only")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    rows = []
    for name in args.models or model_names():
        row = run_model(name)
        rows.append(row)
        results = ", ".join(f"{r.preset}: {r.status} ({r.total})" for r in row.runs)
        print(f"{name:28s} {row.seconds:6.1f}s  {row.canonizers:40s} {results}", flush=True)
    text = document(rows)
    if args.out != "-":
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 1 if any(row.silent for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
