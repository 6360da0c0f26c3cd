"""The bundled demo ViT: size, accuracy, registration, and where AttnLRP / CP-LRP put the relevance."""

from __future__ import annotations

import pytest
import torch

import zplug
from zplug.demo import CLASSES, DemoViT, generate, load_vit
from zplug.demo.vit import weights_path

N_EVAL = 200
EVAL_SEED = 20261  # never used for training (1000..1029), validation (1), test (2) or samples (7)


@pytest.fixture(scope="module")
def model():
    return load_vit()


@pytest.fixture(scope="module")
def data():
    return generate(N_EVAL, seed=EVAL_SEED)


def test_weights_are_small_and_load_without_code():
    assert weights_path().stat().st_size < 2 * 1024 * 1024
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    assert set(state) == set(DemoViT().state_dict())


def test_accuracy_on_fresh_samples(model, data):
    images, labels, _ = data
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).double().mean().item()
    assert accuracy >= 0.95


def test_registered_as_demo_vit(registry):
    assert isinstance(registry.models["demo_vit"](), DemoViT)
    assert DemoViT.zplug_input["classes"] == list(CLASSES)


def test_auto_canonizers_make_the_attention_visible(model):
    mapping = zplug.resolve(model, "cp_lrp")
    assert [c.name for c in mapping.canonizers] == ["multihead_attention", "residual_sum"]
    assert not mapping.unmapped


@pytest.mark.parametrize("preset", ["cp_lrp", "attnlrp"])
def test_pointing_game(model, data, preset):
    """The largest relevance of the true class lies on the shape in at least 85 % of fresh samples."""
    images, labels, masks = data
    onehot = torch.nn.functional.one_hot(labels, len(CLASSES)).to(images.dtype)
    explanation = zplug.explain(model, images, target=lambda out: out * onehot, preset=preset)
    heat = explanation.relevance.sum(1).flatten(1)
    hits = masks.flatten(1).gather(1, heat.argmax(1, keepdim=True))[:, 0]
    assert hits.double().mean().item() >= 0.85


def test_cp_lrp_conserves_on_the_demo_vit_without_biases(model):
    images, labels, _ = generate(4, seed=EVAL_SEED)
    bias_free = DemoViT().double()
    bias_free.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, p in bias_free.named_parameters():
            if name.endswith("bias") or name in ("class_token", "position"):
                p.zero_()
    onehot = torch.nn.functional.one_hot(labels, len(CLASSES)).double()
    explanation = zplug.explain(bias_free.eval(), images.double(), target=lambda out: out * onehot,
                                preset="cp_lrp", epsilon=1e-12, stabilizer=1e-12)
    logits = (explanation.output * onehot).sum(1)
    torch.testing.assert_close(explanation.relevance.sum((1, 2, 3)), logits, rtol=1e-6, atol=1e-9)
