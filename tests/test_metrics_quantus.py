"""Parity with Quantus 0.6.0: the same model, inputs, attributions and baseline give the same curves.

Quantus runs its model on ``torch.Tensor(x)``, i.e. in torch's default dtype; the tests set it to
float64 while Quantus runs, and use float64 models and inputs, so both libraries compute in float64
and the curves agree to round-off. The attributions are continuous random numbers: Quantus orders
with numpy's unstable ``argsort``, so the order of tied relevance is arbitrary there (zplug keeps
ties in index order), and parity is only defined without ties across a step boundary.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch

import zplug
from zplug.demo.model import load_model

quantus = pytest.importorskip("quantus", reason="Quantus 0.6.0 is a test-only reference (pip install quantus==0.6.0)")

TOL = 1e-6


@contextlib.contextmanager
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_default_dtype(old)


def run_quantus(metric, model, x, y, a, softmax=True) -> np.ndarray:
    with float64_default():
        out = metric(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), channel_first=True,
            softmax=softmax, device="cpu",
        )
    return np.asarray(out, dtype=np.float64)


@pytest.fixture(scope="module")
def demo():
    model = load_model().double()
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 32, 32, generator=generator, dtype=torch.float64)
    y = torch.tensor([0, 2, 3])
    return model, x, y, generator


def quantus_pixel_flipping(per_step, baseline="black"):
    return quantus.PixelFlipping(
        features_in_step=per_step, perturb_baseline=baseline, disable_warnings=True, display_progressbar=False
    )


def quantus_region(patch_size, order, regions, baseline="black"):
    return quantus.RegionPerturbation(
        patch_size=patch_size, order=order, regions_evaluation=regions, perturb_baseline=baseline,
        disable_warnings=True, display_progressbar=False,
    )


@pytest.mark.parametrize(("zplug_baseline", "quantus_baseline"), [("black", "black"), ("running_mean", "mean")])
def test_pixel_flipping_per_element(registry, demo, zplug_baseline, quantus_baseline):
    model, x, y, generator = demo
    x = x[:, :, 8:24, 8:24].contiguous()  # 16 x 16 keeps the number of steps small
    a = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    expected = run_quantus(quantus_pixel_flipping(16, quantus_baseline), model, x, y, a)
    result = zplug.evaluate(
        model, x, y, a, metric="pixel_flipping", channels="separate", per_step=16, baseline=zplug_baseline
    )
    curve = result.curves["morf"]
    assert expected.shape == (3, 3 * 16 * 16 // 16)
    np.testing.assert_allclose(curve.scores[:, 1:].numpy(), expected, rtol=0, atol=TOL)
    # Quantus's return_auc_per_sample is np.trapz(curve, dx=1) (np.trapz is gone from numpy >= 2.4)
    np.testing.assert_allclose(curve.step_auc().numpy(), np.trapezoid(expected, dx=1, axis=1), rtol=0, atol=TOL)


def test_pixel_flipping_pixels_match_broadcast_attributions(registry, demo):
    """A pixel's channels go together: Quantus with one-channel attributions and C features per pixel."""
    model, x, y, generator = demo
    x = x[:, :, 4:28, 4:28].contiguous()  # 24 x 24: Quantus needs features_in_step to divide H * W
    a = torch.randn(x.shape[0], 1, 24, 24, generator=generator, dtype=torch.float64)
    expected = run_quantus(quantus_pixel_flipping(3 * 16), model, x, y, a)
    assert expected.shape == (3, 24 * 24 // 16)
    result = zplug.evaluate(model, x, y, a, metric="pixel_flipping", per_step=16)
    np.testing.assert_allclose(result.curves["morf"].scores[:, 1:].numpy(), expected, rtol=0, atol=TOL)
    # the same with the channel-summed relevance of a 3-channel attribution
    a3 = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    expected = run_quantus(quantus_pixel_flipping(3 * 16), model, x, y, a3.sum(1, keepdim=True))
    result = zplug.evaluate(model, x, y, a3, metric="pixel_flipping", per_step=16)
    np.testing.assert_allclose(result.curves["morf"].scores[:, 1:].numpy(), expected, rtol=0, atol=TOL)


def test_pixel_flipping_logits(registry, demo):
    model, x, y, generator = demo
    x = x[:, :, 8:24, 8:24].contiguous()
    a = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    expected = run_quantus(quantus_pixel_flipping(32), model, x, y, a, softmax=False)
    result = zplug.evaluate(model, x, y, a, metric="pixel_flipping", channels="separate", per_step=32, score="logit")
    np.testing.assert_allclose(result.curves["morf"].scores[:, 1:].numpy(), expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize(("patch_size", "zplug_baseline", "quantus_baseline"), [
    (4, "black", "black"),
    (5, "black", "black"),  # 32 is no multiple of 5: Quantus pads, zplug cuts the border patches alike
    (5, "running_mean", "mean"),  # the mean of the edge-padded input as perturbed so far
    (4, 0.25, 0.25),
])
def test_region_perturbation(registry, demo, order, patch_size, zplug_baseline, quantus_baseline):
    model, x, y, generator = demo
    a = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    expected = run_quantus(quantus_region(patch_size, order, 20, quantus_baseline), model, x, y, a)
    result = zplug.evaluate(
        model, x, y, a, metric="region_perturbation", patch_size=patch_size, order=order, regions=20,
        baseline=zplug_baseline,
    )
    curve = result.curves[order]
    assert expected.shape == (3, 20)
    np.testing.assert_allclose(curve.drops[:, 1:].numpy(), expected, rtol=0, atol=TOL)
    # the score is the AOPC: the mean drop over steps 0 .. K (step 0 drops nothing)
    np.testing.assert_allclose(result.scores.numpy(), expected.sum(1) / 21, rtol=0, atol=TOL)


def test_region_perturbation_all_regions(registry, demo):
    """More regions than patches: both stop when every patch is gone."""
    model, x, y, generator = demo
    a = torch.randn(x.shape[0], 1, 32, 32, generator=generator, dtype=torch.float64)
    expected = run_quantus(quantus_region(8, "morf", 100), model, x, y, a)
    result = zplug.evaluate(model, x, y, a, metric="region_perturbation", patch_size=8, regions=100)
    assert expected.shape == (3, 16)
    np.testing.assert_allclose(result.curves["morf"].drops[:, 1:].numpy(), expected, rtol=0, atol=TOL)


def test_resnet18_region_perturbation_and_pixel_flipping(registry):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).double().eval()
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)
    y = torch.tensor([1, 7])
    a = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    expected = run_quantus(quantus_region(8, "morf", 12), model, x, y, a)
    result = zplug.evaluate(model, x, y, a, metric="region_perturbation", patch_size=8, regions=12)
    np.testing.assert_allclose(result.curves["morf"].drops[:, 1:].numpy(), expected, rtol=0, atol=TOL)
    expected = run_quantus(quantus_pixel_flipping(2048), model, x, y, a)
    result = zplug.evaluate(model, x, y, a, metric="pixel_flipping", channels="separate", per_step=2048)
    np.testing.assert_allclose(result.curves["morf"].scores[:, 1:].numpy(), expected, rtol=0, atol=TOL)
