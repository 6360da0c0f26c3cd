"""Every torchvision classification model either conserves or zplug says what it cannot cover.

The check is ``benchmarks/zoo.py`` (which also writes the table in docs/torchvision-zoo.md):
float64, seeded random weights, no additive constants, stabilisers 1e-12, so every rule that
conserves layer by layer gives a relevance sum of 1. ``make test`` runs the models that once
failed silently and one model per family; ``make test-zoo`` (``ZPLUG_ZOO=1``) runs all 80.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ZOO_FILE = Path(__file__).resolve().parents[3] / "benchmarks" / "zoo.py"
#: Models that were silently wrong before (RegNetY, EfficientNetV2, inception_v3) and one per family.
DEFAULT = (
    "regnet_y_400mf", "regnet_x_400mf", "efficientnet_v2_s", "inception_v3", "googlenet", "shufflenet_v2_x0_5",
    "mnasnet0_5", "squeezenet1_1", "alexnet", "mobilenet_v3_small", "resnext50_32x4d", "wide_resnet50_2",
    "vit_b_32", "swin_t", "swin_v2_t", "convnext_tiny",
)  # fmt: skip
#: Models that must conserve (not just warn) under every preset that is not lossy.
MUST_CONSERVE = ("regnet_y_400mf", "efficientnet_v2_s", "inception_v3")


def _zoo():
    spec = importlib.util.spec_from_file_location("zplug_zoo_check", ZOO_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


zoo = _zoo()
MODELS = zoo.model_names() if os.environ.get("ZPLUG_ZOO") == "1" else DEFAULT


@pytest.mark.parametrize("name", MODELS)
def test_conserves_or_warns(name):
    row = zoo.run_model(name)
    statuses = {run.preset: run.status for run in row.runs}
    assert not row.silent, f"{name}: wrong relevance without a warning: {row.runs}"
    assert "error" not in statuses.values(), row.runs
    if zoo.is_transformer(name):
        assert statuses == {"cp_lrp": "conserves"}, row.runs  # zero uncovered operations, and it conserves
    else:
        assert statuses["epsilon"] == "conserves", row.runs
        assert statuses["epsilon_plus"] in ("conserves", "lossy (noted)"), row.runs
    if name in MUST_CONSERVE:
        assert statuses["epsilon"] == "conserves"


def test_the_default_list_names_real_models():
    assert set(DEFAULT) <= set(zoo.model_names()) and len(zoo.model_names()) == 80


@pytest.mark.parametrize("name", ["googlenet", "inception_v3", "efficientnet_v2_s"])
def test_ledger_works_with_inplace_activations_after_merged_batchnorms(name):
    import torch

    import zplug

    model = zoo.build(name)
    size = zoo.input_size(name)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    e = zplug.explain(model, x, target=3, preset=str(zoo.EPSILON_PRESET), ledger=True,
                      epsilon=zoo.STABILIZER, stabilizer=zoo.STABILIZER)
    assert "merge_batchnorm" in [c.name for c in e.mapping.canonizers] or name == "efficientnet_v2_s"
    assert len([entry for entry in e.ledger.entries if entry.kind == "layer"]) > 50
    assert [entry.name for entry in e.ledger.leaks() if abs(entry.lost) > 1e-9] == []
    assert float(e.relevance.sum()) == pytest.approx(1.0, rel=1e-6)
