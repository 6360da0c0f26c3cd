"""The bundled demo: generated data, the trained model, its heatmaps, the samples, the registration."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import zplug
from zplug.demo import CLASSES, DemoNet, generate, load_model, load_samples, weights_path
from zplug.engine import attach_rules
from zplug.layers import Sum
from zplug.rules import Epsilon, Flat, Norm, Pass, ZPlus

N_EVAL = 200
EVAL_SEED = 20260  # never used for training (1000..1019), validation (1), test (2) or samples (7)


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def data():
    return generate(N_EVAL, seed=EVAL_SEED)


def _relevance(model, images, labels, context):
    """Relevance of the true class: the output times its one-hot vector, propagated back."""
    inputs = images.clone().requires_grad_(True)
    with context:
        output = model(inputs)
        (relevance,) = torch.autograd.grad(output, inputs, nn.functional.one_hot(labels, len(CLASSES)) * output)
    return relevance


def _max_in_mask(relevance, masks):
    """Per sample: whether the maximum of the channel-summed heatmap lies inside the object mask."""
    heat = relevance.sum(1).flatten(1)
    return masks.flatten(1).gather(1, heat.argmax(1, keepdim=True))[:, 0]


def _merged(model):
    """A copy of ``model`` with each BatchNorm folded into the convolution before it (a reference canonizer)."""
    merged = copy.deepcopy(model)
    for number in range(1, 6):
        conv, norm = getattr(merged, f"conv{number}"), getattr(merged, f"bn{number}")
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        bias = torch.zeros_like(scale) if conv.bias is None else conv.bias
        conv.weight = nn.Parameter(conv.weight * scale[:, None, None, None])
        conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias)
        setattr(merged, f"bn{number}", nn.Identity())
    return merged.eval()


def _epsilon_plus_flat(model):
    """The epsilon_plus_flat assignment, written out: flat first, z+ convs, epsilon dense, pass, norm."""
    assignment = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            assignment[name] = Flat() if name == "conv1" else ZPlus()
        elif isinstance(module, nn.Linear):
            assignment[name] = Epsilon()
        elif isinstance(module, nn.ReLU):
            assignment[name] = Pass()
        elif isinstance(module, Sum | nn.AdaptiveAvgPool2d):
            assignment[name] = Norm()
    return assignment


def test_generate_is_deterministic_and_well_formed():
    images, labels, masks = generate(40, seed=3)
    again = generate(40, seed=3)
    for a, b in zip((images, labels, masks), again):
        assert torch.equal(a, b)
    assert not torch.equal(generate(40, seed=4)[0], images)
    assert images.shape == (40, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and masks.shape == (40, 32, 32) and masks.dtype == torch.bool
    assert 0 <= images.min() and images.max() <= 1
    assert set(labels.tolist()) == set(range(len(CLASSES)))
    area = masks.flatten(1).float().mean(1)
    assert (area > 0.03).all() and (area < 0.6).all()
    # the object is visible: its mean colour differs from the background's
    inside = (images * masks[:, None]).sum((2, 3)) / masks.sum((1, 2))[:, None]
    outside = (images * ~masks[:, None]).sum((2, 3)) / (~masks).sum((1, 2))[:, None]
    assert ((inside - outside).norm(dim=1) > 0.15).float().mean() > 0.9


def test_model_structure_and_weights(model):
    assert weights_path().stat().st_size < 2 * 1024**2
    state = torch.load(weights_path(), weights_only=True)
    assert set(state) == set(DemoNet().state_dict())
    assert not model.training
    names = [name for name, _ in model.named_modules() if name]
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):  # BatchNorm right after each convolution, ready to be merged
            assert isinstance(getattr(model, names[names.index(name) + 1]), nn.BatchNorm2d)
        assert not getattr(module, "inplace", False)
    assert isinstance(model.add, Sum)


def test_accuracy_on_fresh_samples(model, data):
    images, labels, _ = data
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    print(f"demo accuracy on {N_EVAL} fresh samples: {accuracy:.3f}")
    assert accuracy >= 0.95


def test_lrp_heatmap_maximum_lies_on_the_object(model, data):
    images, labels, masks = data
    with torch.no_grad():
        correct = model(images).argmax(1) == labels
    mapping = zplug.resolve(model, "epsilon_plus_flat")
    lrp = _relevance(model, images, labels, mapping.applied(model))
    gradient = _relevance(model, images, labels, torch.enable_grad())
    lrp_rate = _max_in_mask(lrp, masks)[correct].float().mean().item()
    gradient_rate = _max_in_mask(gradient, masks)[correct].float().mean().item()
    absolute_rate = _max_in_mask(gradient.abs(), masks)[correct].float().mean().item()
    print(
        f"heatmap maximum inside the object ({correct.sum().item()} correct samples): epsilon_plus_flat "
        f"{lrp_rate:.3f}, gradient {gradient_rate:.3f} (|gradient| summed over channels: {absolute_rate:.3f})"
    )
    assert lrp_rate >= 0.9
    # the relevance is mostly conserved (biases of the merged BatchNorm absorb some)
    ratio = lrp.sum((1, 2, 3)) / (model(images).gather(1, labels[:, None])[:, 0])
    assert ratio[correct].median() > 0.3


def test_preset_equals_explicit_assignment_on_merged_copy(model, data):
    images, labels, _ = data
    images, labels = images[:32], labels[:32]
    mapping = zplug.resolve(model, "epsilon_plus_flat")
    through_preset = _relevance(model, images, labels, mapping.applied(model))
    merged = _merged(model)
    explicit = _relevance(merged, images, labels, attach_rules(merged, _epsilon_plus_flat(merged)))
    torch.testing.assert_close(through_preset, explicit, rtol=1e-4, atol=1e-6)
    # without merging BatchNorm the heatmaps differ: the canonizer matters
    unmerged = _relevance(model, images, labels, attach_rules(model, _epsilon_plus_flat(model)))
    assert (unmerged - explicit).abs().max() > 1e-3 * explicit.abs().max()


def test_bundled_samples(model):
    images, labels, paths = load_samples()
    assert images.shape == (12, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert labels.tolist() == [label for label in range(len(CLASSES)) for _ in range(3)]
    assert all(path.parent.name == CLASSES[label] for path, label in zip(paths, labels.tolist()))
    with torch.no_grad():
        assert torch.equal(model(images).argmax(1), labels)


def test_demo_model_is_registered(registry):
    factory = registry.models["demo"]
    built = factory()
    assert isinstance(built, DemoNet) and not built.training
    for name, value in built.state_dict().items():
        assert torch.equal(value, load_model().state_dict()[name])


def test_training_is_deterministic():
    from zplug.demo.train import train

    first, second = (train(epochs=1, per_epoch=128, batch_size=32, validation=0) for _ in range(2))
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.conv1.weight, DemoNet().conv1.weight)


def test_write_samples_layout(tmp_path):
    from zplug.demo.train import write_samples

    paths = write_samples(tmp_path, per_class=1, seed=3)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == sorted(f"{c}/{c}_0.png" for c in CLASSES)
    from PIL import Image

    assert np.asarray(Image.open(paths[0])).shape == (32, 32, 3)
