"""Attributors: parity with Zennit 0.5.1 and Captum 0.9, chunking, sessions, parameter checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import NoiseTunnel, Saliency
from captum.attr import Occlusion as CaptumOcclusion
from zennit import attribution as za
from zennit.composites import EpsilonPlus

import zplug
from zplug.attributors import Gradient, IntegratedGradients, Occlusion, SmoothGrad, attributor, make_attributor
from zplug.attributors.occlusion import window_starts
from zplug.errors import SpecError

_spec = importlib.util.spec_from_file_location("attr_models", Path(__file__).with_name("test_attributors_models.py"))
models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(models)


def onehot(n: int, c: int, classes: int) -> torch.Tensor:
    return torch.eye(classes)[[c] * n]


def run(model, x, att, target=1, mapping=None):
    return att.session(model, mapping)(x, target)


# -- Zennit 0.5.1 parity ---------------------------------------------------------------------------
def test_gradient_matches_zennit_plain_and_with_composite():
    model, x = models.cnn(), torch.randn(3, 3, 8, 8)
    with za.Gradient(model) as zen:
        z_out, z_rel = zen(x, onehot(3, 2, 4))
    out, rel = run(model, x, Gradient(), target=2)
    torch.testing.assert_close(out, z_out)
    torch.testing.assert_close(rel, z_rel)
    with za.Gradient(model, EpsilonPlus()) as zen:
        _, z_lrp = zen(x, onehot(3, 2, 4))
    lrp = zplug.explain(model, x, 2, preset="epsilon_plus").relevance
    torch.testing.assert_close(lrp, z_lrp, rtol=1e-4, atol=1e-6)


def test_smoothgrad_zero_noise_matches_zennit_and_gradient():
    model, x = models.cnn(), torch.randn(2, 3, 8, 8)
    with za.SmoothGrad(model, noise_level=0.0, n_iter=3) as zen:
        _, z_rel = zen(x, onehot(2, 1, 4))
    _, rel = run(model, x, SmoothGrad(noise_level=0.0, n_iter=3))
    _, grad = run(model, x, Gradient())
    torch.testing.assert_close(rel, z_rel)
    torch.testing.assert_close(rel, grad)


@pytest.mark.parametrize("composite", [None, EpsilonPlus])
def test_smoothgrad_with_seed_matches_zennit_up_to_its_clean_last_sample(composite):
    # Zennit averages n-1 noisy draws and one clean pass (the last); zplug draws n noisy ones,
    # consuming the generator in the same order, so  zennit(n+1) * (n+1) == zplug(n) * n + gradient.
    model, x, n = models.cnn(), torch.randn(2, 3, 8, 8), 4
    torch.manual_seed(7)
    with za.SmoothGrad(model, None if composite is None else composite(), noise_level=0.2, n_iter=n + 1) as zen:
        z_out, z_rel = zen(x, onehot(2, 1, 4))
    preset = None if composite is None else "epsilon_plus"
    torch.manual_seed(7)
    smooth = zplug.explain(model, x, 1, preset=preset, attributor="smoothgrad", noise_level=0.2, n_iter=n, chunk_size=3)
    grad = zplug.explain(model, x, 1, preset=preset).relevance
    torch.testing.assert_close(smooth.output, z_out)
    torch.testing.assert_close(smooth.relevance * n + grad, z_rel * (n + 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("composite", [None, EpsilonPlus])
def test_integrated_gradients_match_zennit(composite):
    model, x = models.cnn(), torch.randn(2, 3, 8, 8)
    with za.IntegratedGradients(model, None if composite is None else composite(), n_iter=5) as zen:
        z_out, z_rel = zen(x, onehot(2, 3, 4))
    preset = None if composite is None else "epsilon_plus"
    ig = zplug.explain(model, x, 3, preset=preset, attributor="integrated_gradients", n_iter=5, chunk_size=2)
    torch.testing.assert_close(ig.output, z_out)
    torch.testing.assert_close(ig.relevance, z_rel, rtol=1e-4, atol=1e-6)


def test_integrated_gradients_n_iter_1_is_gradient_times_input():
    model, x = models.mlp(), torch.randn(4, 6)
    _, rel = run(model, x, IntegratedGradients(n_iter=1), target=0)
    _, grad = run(model, x, Gradient(), target=0)
    torch.testing.assert_close(rel, grad * x)


def test_occlusion_is_clean_score_minus_zennit_with_a_zeroing_occlusion_fn():
    # Zennit scores x with the window zeroed (given this occlusion_fn) and sums mask * score;
    # zplug reports the drop: score(x) - score(x with the window filled).
    model, x = models.cnn(), torch.randn(2, 3, 8, 8)
    target = onehot(2, 1, 4)
    with za.Occlusion(model, window=(2, 2), stride=(2, 2), occlusion_fn=lambda inp, mask: inp * ~mask) as zen:
        _, z_rel = zen(x, lambda out: out * target)
    out, rel = run(model, x, Occlusion(window=2), target=1)
    torch.testing.assert_close(rel, out[:, 1].reshape(2, 1, 1, 1) - z_rel, rtol=1e-5, atol=1e-5)


def test_occlusion_positions_no_window_covers_get_zero():
    x = torch.arange(1.0, 8.0).reshape(1, 7)
    _, rel = Occlusion(window=1, stride=3).session(lambda t: t.sum(1, keepdim=True))(x, 0)
    torch.testing.assert_close(rel, torch.tensor([[1.0, 0, 0, 4, 0, 0, 7]]))


def test_occlusion_windows_do_not_wrap_around_unlike_zennit():
    assert window_starts(10, 4, 4) == [0, 4, 8]
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(3, 8, 8) == [0]
    windows = Occlusion(window=4).windows((1, 10))
    assert windows == [(slice(0, 4),), (slice(4, 8),), (slice(8, 10),)]
    # Zennit rolls the third window to {8, 9, 0, 1}: with a model that sums the input, the
    # score of position 0 then includes positions 8 and 9.
    x = torch.arange(1.0, 11.0).reshape(1, 10)

    def model(t):
        return t.sum(1, keepdim=True)

    with za.Occlusion(model, window=4, stride=4) as zen:
        _, z_rel = zen(x, lambda out: out)
    assert z_rel[0, 0].item() == pytest.approx(1 + 2 + 3 + 4 + 9 + 10 + 1 + 2)
    _, rel = Occlusion(window=4).session(model)(x, 0)
    torch.testing.assert_close(rel, torch.tensor([[10.0] * 4 + [26.0] * 4 + [19.0] * 2]))


# -- Captum 0.9 parity -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid",
                                    "gausslegendre"])
def test_integrated_gradients_match_captum(method):
    model, x, base = models.cnn(), torch.randn(2, 3, 8, 8), torch.randn(1, 3, 8, 8) * 0.1
    expected = CaptumIG(model).attribute(x, baselines=base, target=[0, 2], n_steps=6, method=method)
    if method == "riemann_trapezoid":  # Captum's trapezoid weights sum to (n - 1) / n, zplug's to 1
        expected = expected * 6 / 5
    _, rel = run(model, x, IntegratedGradients(baseline=base, n_iter=6, method=method, chunk_size=4), target=[0, 2])
    torch.testing.assert_close(rel, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("window", "stride"), [(2, 2), (3, 1), ((4, 2), (2, 1))])
def test_occlusion_matches_captum(window, stride):
    model, x = models.cnn(), torch.randn(2, 3, 8, 8)
    win = (window, window) if isinstance(window, int) else window
    std = (stride, stride) if isinstance(stride, int) else stride
    expected = CaptumOcclusion(model).attribute(
        x, sliding_window_shapes=(3, *win), strides=(1, *std), baselines=0.5, target=3
    )
    _, rel = run(model, x, Occlusion(window=window, stride=stride, fill=0.5, chunk_size=5), target=3)
    torch.testing.assert_close(rel, expected, rtol=1e-5, atol=1e-5)


def test_smoothgrad_matches_captum_noise_tunnel_with_seed():
    # One sample with 3 features and 5 draws: fewer than 16 numbers, so torch draws them one by
    # one and Captum's single draw equals zplug's draw per copy.
    model, x = models.mlp(), torch.tensor([[0.3, -1.0, 2.0, 0.5, -0.2, 1.1]])
    model = torch.nn.Sequential(torch.nn.Linear(2, 6), *list(model)).eval()
    x = x[:, :2]
    std = 0.3 * float(x.max() - x.min())
    torch.manual_seed(3)
    expected = NoiseTunnel(Saliency(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=5, stdevs=std, target=1, abs=False
    )
    torch.manual_seed(3)
    _, rel = run(model, x, SmoothGrad(noise_level=0.3, n_iter=5, chunk_size=2))
    torch.testing.assert_close(rel, expected, rtol=1e-5, atol=1e-6)
    _, grad = run(model, x, Gradient())
    assert not torch.allclose(rel, grad)  # the noise mattered


# -- properties ------------------------------------------------------------------------------------
def test_integrated_gradients_completeness_error_shrinks_with_n_iter():
    model, x = models.mlp(torch.nn.Tanh), torch.randn(3, 6) * 2
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x)))[:, 1]
    errors = {}
    for method in ("riemann_right", "riemann_middle"):
        for n in (2, 8, 32, 128):
            _, rel = run(model, x, IntegratedGradients(n_iter=n, method=method, chunk_size=64))
            errors[method, n] = (rel.sum(1) - gap).abs().max().item()
    for method in ("riemann_right", "riemann_middle"):
        assert errors[method, 2] > errors[method, 8] > errors[method, 32] > errors[method, 128]
    assert errors["riemann_right", 128] < 0.02 * gap.abs().max().item()
    assert errors["riemann_middle", 128] < 1e-3 * gap.abs().max().item()  # second order


@pytest.mark.parametrize("att", [SmoothGrad(n_iter=5, noise_level=0.2), IntegratedGradients(n_iter=5),
                                 Occlusion(window=3, stride=2)])
def test_results_do_not_depend_on_chunk_size(att):
    import attrs

    model, x = models.cnn(), torch.randn(2, 3, 8, 8)
    results = []
    for size in (1, 3, 100):
        torch.manual_seed(11)
        results.append(run(model, x, attrs.evolve(att, chunk_size=size))[1])
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0], results[2], rtol=1e-5, atol=1e-6)


def test_progress_is_reported_per_chunk():
    model, x = models.mlp(), torch.randn(2, 6)
    calls = []
    zplug.explain(model, x, attributor="integrated_gradients", n_iter=5, chunk_size=2,
                  progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    calls.clear()
    zplug.explain(model, x, attributor="occlusion", window=2, chunk_size=2, progress=lambda *a: calls.append(a))
    assert calls == [(2, 3), (3, 3)]


class CountingMapping:
    def __init__(self, rules):
        self.rules, self.entered = rules, 0

    def applied(self, model, observers=()):
        from zplug.engine import attach_rules

        self.entered += 1
        return attach_rules(model, self.rules, observers=tuple(observers))


def test_session_attaches_rules_once_for_all_chunks_and_batches():
    model = models.mlp()
    mapping = CountingMapping({"0": zplug.rule("epsilon"), "2": zplug.rule("epsilon"), "4": zplug.rule("epsilon")})
    session = SmoothGrad(n_iter=6, chunk_size=2).session(model, mapping)
    with session:
        for _ in range(3):
            session(torch.randn(2, 6), 0)
        assert isinstance(model[0].__dict__.get("forward"), zplug.engine.Binding)
    assert mapping.entered == 1
    assert "forward" not in model[0].__dict__
    session(torch.randn(2, 6), 0)  # outside ``with``: attached for this call only
    assert mapping.entered == 2 and "forward" not in model[0].__dict__


def test_occlusion_does_not_apply_the_mapping():
    mapping = CountingMapping({"0": zplug.rule("epsilon")})
    Occlusion(window=2).session(models.mlp(), mapping)(torch.randn(1, 6), 0)
    assert mapping.entered == 0


# -- parameters ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("smoothgrad", {"n_iter": 0}, "attributor 'smoothgrad': parameter 'n_iter' must be an integer >= 1 (got 0)"),
        ("smoothgrad", {"noise_level": -1}, "attributor 'smoothgrad': parameter 'noise_level' must be a number >= 0 "
                                             "(got -1)"),
        ("occlusion", {"windw": 3}, "attributor 'occlusion' has no parameter 'windw' (did you mean 'window'? "
                                    "valid: window, stride, fill, chunk_size)"),
        ("occlusion", {"window": (2, 0)}, "attributor 'occlusion': parameter 'window' must be an integer >= 1 or a "
                                          "tuple of them (got (2, 0))"),
        ("integrated_gradients", {"method": "simpson"}, "attributor 'integrated_gradients': parameter 'method' must "
         "be one of riemann_right, riemann_left, riemann_middle, riemann_trapezoid, gausslegendre (got 'simpson')"),
        ("integrated_gradients", {"baseline": "zeros"}, "attributor 'integrated_gradients': parameter 'baseline' must "
         "be a number, a tensor, a callable f(input) -> baseline, or a tuple of these per input (got 'zeros')"),
        ("gradient", {"n_iter": 3}, "attributor 'gradient' has no parameter 'n_iter' (valid: none)"),
    ],
)
def test_parameter_errors(registry, name, params, message):
    with pytest.raises(SpecError) as info:
        attributor(name, **params)
    assert str(info.value) == message


def test_registered_through_the_hook(registry):
    assert {"gradient", "smoothgrad", "integrated_gradients", "occlusion"} <= set(registry.attributors)
    assert registry.attributors.entry("occlusion").plugin == "zplug"
    assert attributor("smoothgrad", n_iter=3) == SmoothGrad(n_iter=3)
    assert make_attributor(Occlusion, {"window": [2, 3]}).window == (2, 3)


def test_baseline_forms():
    model, x = models.mlp(), torch.randn(2, 6)
    a = run(model, x, IntegratedGradients(baseline=0.5, n_iter=3))[1]
    b = run(model, x, IntegratedGradients(baseline=torch.full((6,), 0.5), n_iter=3))[1]
    c = run(model, x, IntegratedGradients(baseline=lambda t: torch.full_like(t, 0.5), n_iter=3))[1]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    with pytest.raises(SpecError, match=r"the baseline of shape \(5,\) does not broadcast to the input of shape"):
        run(model, x, IntegratedGradients(baseline=torch.zeros(5), n_iter=3))
