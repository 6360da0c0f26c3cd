"""``zplug.explain`` refuses a model whose forward pass would change it (BatchNorm in training mode)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zplug
from zplug.demo.model import load_model
from zplug.errors import ModelMismatchError
from zplug.evalmode import updating_modules

MESSAGE = (
    "the model is in training mode: BatchNorm2d 'bn1' (and 4 more) would update its running statistics on every "
    "forward pass, changing the model and normalising with batch statistics; call model.eval() before explaining"
)


def state(model: nn.Module) -> dict:
    """Everything explaining could change: tensors, modes, hooks, instance attributes."""
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for n, m in model.named_modules()},
        "attributes": {n: sorted(vars(m)) for n, m in model.named_modules()},
    }


def same(a: dict, b: dict) -> bool:
    tensors = a["tensors"].keys() == b["tensors"].keys() and all(
        torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])
    return tensors and all(a[k] == b[k] for k in ("training", "hooks", "attributes"))


@pytest.mark.parametrize("preset", [None, "epsilon_plus"])
@pytest.mark.parametrize("attributor", ["gradient", "occlusion"])
def test_training_mode_with_running_statistics_is_refused_and_the_model_unchanged(registry, preset, attributor):
    model = load_model().train()
    before = state(model)
    with pytest.raises(ModelMismatchError) as info:
        zplug.explain(model, torch.rand(2, 3, 32, 32), preset=preset, attributor=attributor)
    assert str(info.value) == MESSAGE
    assert same(before, state(model))


def test_what_plain_pytorch_would_have_changed():
    """The check is needed: one forward pass in training mode moves the running mean."""
    model = load_model().train()
    mean = model.bn1.running_mean.clone()
    model(torch.rand(2, 3, 32, 32))
    assert not torch.equal(mean, model.bn1.running_mean)


def test_modules_without_running_statistics_are_allowed(registry):
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0), nn.BatchNorm1d(4, track_running_stats=False),
                          nn.Linear(4, 2)).train()
    assert updating_modules(model) == []
    zplug.explain(model, torch.rand(3, 4))
    model.eval()
    zplug.explain(load_model(), torch.rand(1, 3, 32, 32))


def test_the_model_itself_a_batchnorm():
    with pytest.raises(ModelMismatchError, match=r"^the model is in training mode: the model \(BatchNorm1d\) would"):
        zplug.explain(nn.BatchNorm1d(3), torch.rand(4, 3))
