"""``zplug explain`` and the model: eval mode, --output-index, outputs against class names and targets."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

import zplug
from zplug.cli import main
from zplug.demo.model import load_model
from zplug.demo.samples import samples_dir
from zplug.inputs import Preprocess

CIRCLE0 = samples_dir() / "circle" / "circle_0.png"


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["explain", *args])
    out, err = capsys.readouterr()
    return status, out, err


class TwoHeads(nn.Module):
    """The demo model's logits, and their negation, as a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.net = load_model()

    def forward(self, x):
        logits = self.net(x)
        return logits, -logits


@pytest.fixture
def factories(monkeypatch):
    module = types.ModuleType("zplug_test_factories")
    module.two_heads = TwoHeads
    module.training = lambda: load_model().train()
    monkeypatch.setitem(sys.modules, "zplug_test_factories", module)
    return module


def test_a_tuple_output_needs_output_index(registry, capsys, tmp_path, factories):
    status, _, err = run(capsys, str(CIRCLE0), "--model", "zplug_test_factories:two_heads", "--out",
                         str(tmp_path / "a"))
    assert (status, err) == (2, "zplug: error: model 'zplug_test_factories:two_heads' returns a tuple of 2 outputs; "
                                "choose the one to explain with --output-index (0 to 1)\n")
    status, _, err = run(capsys, str(CIRCLE0), "--model", "zplug_test_factories:two_heads", "--output-index", "2",
                         "--out", str(tmp_path / "b"))
    assert err == "zplug: error: --output-index 2 is out of range for the model's 2 outputs\n"
    status, _, _ = run(capsys, str(CIRCLE0), "--model", "zplug_test_factories:two_heads", "--output-index", "1",
                       "--out", str(tmp_path / "c"), "--save-relevance", "--target", "2")
    assert status == 0
    x = torch.from_numpy(Preprocess().load(CIRCLE0)[None])
    expected = zplug.explain(TwoHeads().eval(), x, 2, output_index=1).relevance[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "c" / "relevance" / "00_circle_0.npy"), expected, atol=1e-6)


def test_a_factory_in_training_mode_is_put_in_eval_mode(registry, capsys, tmp_path, factories):
    status, out, err = run(capsys, str(CIRCLE0), "--model", "zplug_test_factories:training", "--out",
                           str(tmp_path / "out"), "--save-relevance")
    assert (status, err) == (0, "")
    assert out.splitlines()[1] == "model: zplug_test_factories:training (demo model convention), eval mode"
    x = torch.from_numpy(Preprocess(resize=32, crop=32).load(CIRCLE0)[None])
    expected = zplug.explain(load_model(), x).relevance[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out" / "relevance" / "00_circle_0.npy"), expected, atol=1e-6)


def test_a_target_beyond_the_outputs(registry, capsys, tmp_path):
    model_module = types.ModuleType("zplug_test_linear")
    model_module.build = lambda: nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    sys.modules["zplug_test_linear"] = model_module
    try:
        status, _, err = run(capsys, str(CIRCLE0), "--model", "zplug_test_linear:build", "--target", "5", "--out",
                             str(tmp_path / "out"))
    finally:
        del sys.modules["zplug_test_linear"]
    assert (status, err) == (2, "zplug: error: --target 5: model 'zplug_test_linear:build' has 3 outputs (0 to 2)\n")


def test_models_that_are_no_classifier_for_these_inputs(registry, capsys, tmp_path, factories):
    status, _, err = run(capsys, str(CIRCLE0), "--model", "torch.nn:Identity", "--out", str(tmp_path / "out"))
    assert (status, err) == (2, "zplug: error: zplug explain needs a classifier with outputs of shape (batch, "
                                "classes); model 'torch.nn:Identity' returned shape (1, 3, 32, 32) for one input\n")
    factories.small = lambda: nn.Linear(5, 2)
    status, _, err = run(capsys, str(CIRCLE0), "--model", "zplug_test_factories:small", "--out", str(tmp_path / "out"))
    assert (status, err) == (2, (
        f"zplug: error: model 'zplug_test_factories:small' fails on input '{CIRCLE0}' (shape (1, 3, 32, 32) after "
        "preprocessing: none (images as they are, values in [0, 1])): RuntimeError: mat1 and mat2 shapes cannot be "
        "multiplied (96x32 and 5x2); check --resize and --crop\n"))
    assert not (tmp_path / "out").exists()


def test_a_declared_convention_is_checked():
    from zplug.cli._models import convention_of
    from zplug.errors import ModelMismatchError

    model = nn.Linear(2, 2)
    model.zplug_input = {"resize": -5}
    with pytest.raises(ModelMismatchError) as info:
        convention_of(model)
    assert str(info.value) == "Linear.zplug_input: resize must be a number of pixels (an integer, 0 or None: off), " \
                              "not -5"
