"""Perturbation metrics against independent computations: a linear model's closed form, explicit loops, formulas."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import zplug
from zplug.errors import ModelMismatchError, SpecError, UnknownNameError
from zplug.metrics.base import Context, CurveRequest, even_counts, fixed_counts, ranks
from zplug.metrics.baselines import fill_values, gaussian_blur, running_mean_table
from zplug.metrics.records import Curve, MetricResult
from zplug.metrics.units import padding_of, patch_units, pixel_units


def tiny_cnn() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4),
    )
    return model.double().eval()


def linear_model(shape, classes=3):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), classes)).double().eval()
    return model


def data(shape=(3, 8, 8), n=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=generator, dtype=torch.float64)
    r = torch.randn(n, *shape, generator=generator, dtype=torch.float64)
    return x, r


# -- a linear model: removing features subtracts their contributions ---------------------------
def linear_curve(model, x, r, target, order, per_step, fill=0.0):
    """Logit of ``target`` after each step, for elements removed in relevance order (independent loop)."""
    weight = model[1].weight[target].detach().numpy()
    bias = float(model[1].bias[target].detach())
    xs, rs = x.reshape(-1).numpy(), r.reshape(-1).numpy()
    order_index = np.argsort(-rs if order == "morf" else rs, kind="stable")
    values = xs.copy()
    curve = [float(weight @ values + bias)]
    for start in range(0, len(order_index), per_step):
        values[order_index[start : start + per_step]] = fill
        curve.append(float(weight @ values + bias))
    return np.array(curve)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_pixel_flipping_elements_on_a_linear_model(registry, order):
    x, r = data()
    model = linear_model(x.shape[1:])
    result = zplug.evaluate(
        model, x, [0, 1, 2], r, metric="pixel_flipping", order=order, channels="separate", per_step=7, baseline=0.0,
        score="logit",
    )
    curve = result.curves[order]
    for n in range(3):
        np.testing.assert_allclose(curve.scores[n].numpy(), linear_curve(model, x[n], r[n], n, order, 7), atol=1e-12)
    # 192 elements in steps of 7: the last step takes the remaining 3
    assert curve.counts.tolist()[-2:] == [189, 192] and curve.steps == 28
    fractions = curve.counts.numpy() / 192
    np.testing.assert_allclose(result.scores.numpy(), np.trapezoid(curve.scores.numpy(), fractions, axis=1))
    assert result.higher_is_better == (order == "lerf")


def test_pixels_sum_the_channels(registry):
    """channels='sum': a pixel's channels go together, ordered by their summed relevance."""
    x, r = data()
    model = linear_model(x.shape[1:])
    result = zplug.evaluate(model, x, 0, r, metric="pixel_flipping", per_step=4, baseline=0.0, score="logit")
    weight = model[1].weight[0].detach().reshape(3, 8, 8)
    for n in range(3):
        pixel_order = np.argsort(-r[n].sum(0).reshape(-1).numpy(), kind="stable")
        values = x[n].clone()
        expected = [float((weight * values).sum() + model[1].bias[0].detach())]
        for start in range(0, 64, 4):
            rows, cols = np.divmod(pixel_order[start : start + 4], 8)
            values[:, rows, cols] = 0.0
            expected.append(float((weight * values).sum() + model[1].bias[0].detach()))
        np.testing.assert_allclose(result.curves["morf"].scores[n].numpy(), expected, atol=1e-12)


def test_even_steps_cover_the_input():
    assert even_counts(10, 4).tolist() == [0, 3, 5, 8, 10]
    assert even_counts(3, 8).tolist() == [0, 1, 2, 3]  # at most one unit per step
    assert fixed_counts(10, 4).tolist() == [0, 4, 8, 10]
    assert fixed_counts(10, 1, 3).tolist() == [0, 1, 2, 3]


def test_region_perturbation_on_a_linear_model_with_padding(registry):
    """7x7 images and 3x3 patches: a centred grid (1 pixel of padding on each side), border patches cut."""
    x, r = data((2, 7, 7))
    model = linear_model((2, 7, 7))
    result = zplug.evaluate(
        model, x, 1, r, metric="region_perturbation", patch_size=3, regions=5, baseline=-1.0, score="logit"
    )
    weight = model[1].weight[1].detach().reshape(2, 7, 7)
    bias = float(model[1].bias[1])
    for n in range(3):
        # patch (i, j) covers rows 3i-1 .. 3i+1 and columns 3j-1 .. 3j+1, cut to the image
        patches = [[(rr, cc) for rr in range(3 * i - 1, 3 * i + 2) for cc in range(3 * j - 1, 3 * j + 2)
                    if 0 <= rr < 7 and 0 <= cc < 7] for i in range(3) for j in range(3)]
        sums = [sum(float(r[n, :, rr, cc].sum()) for rr, cc in patch) for patch in patches]
        values = x[n].clone()
        expected = [float((weight * values).sum()) + bias]
        for index in np.argsort(-np.array(sums), kind="stable")[:5]:
            for rr, cc in patches[index]:
                values[:, rr, cc] = -1.0
            expected.append(float((weight * values).sum()) + bias)
        drops = expected[0] - np.array(expected)
        np.testing.assert_allclose(result.curves["morf"].drops[n].numpy(), drops, atol=1e-12)
        assert result.scores[n].item() == pytest.approx(drops.mean(), abs=1e-12)


def test_patch_grid():
    assert padding_of(7, 3) == (1, 1) and padding_of(32, 5) == (1, 2) and padding_of(8, 4) == (0, 0)
    units = patch_units((2, 7, 7), 3)
    assert units.count == 9 and units.padding == ((1, 1), (1, 1))
    grid = units.index.reshape(2, 9, 9)
    assert torch.equal(grid[0], grid[1])
    assert grid[0, 0, 0] == 0 and grid[0, 8, 8] == 8 and grid[0, 3, 5] == 4
    assert pixel_units((3, 4, 5)).count == 20
    with pytest.raises(SpecError, match=r"^patches need image inputs of shape \(batch, channels, height, width\); "):
        patch_units((3, 16), 4)


def test_ties_keep_index_order():
    relevance = torch.tensor([[1.0, 2.0, 1.0, 2.0, 0.0]])
    assert ranks(relevance, "morf").tolist() == [[2, 0, 3, 1, 4]]
    assert ranks(relevance, "lerf").tolist() == [[1, 3, 2, 4, 0]]


def test_running_mean_is_the_mean_of_the_input_as_perturbed_so_far():
    generator = torch.Generator().manual_seed(4)
    x = torch.rand(2, 30, generator=generator, dtype=torch.float64)
    step = torch.randint(1, 6, (2, 30), generator=generator)  # steps 1..5; 5 = never (steps=4)
    table = running_mean_table(x, step, 4)
    for n in range(2):
        values = x[n].clone()
        for k in range(1, 5):
            fill = values.mean()
            assert table[n, k].item() == pytest.approx(fill.item(), abs=1e-14)
            values[step[n] == k] = fill


def test_baselines():
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 9, 9, generator=generator, dtype=torch.float64)
    assert torch.equal(fill_values(x, "black")[1], torch.full((3, 9, 9), x[1].min().item(), dtype=torch.float64))
    assert torch.equal(fill_values(x, "white")[0], torch.full((3, 9, 9), x[0].max().item(), dtype=torch.float64))
    assert fill_values(x, "mean")[0, 2, 3, 4] == x[0].mean()
    noise = fill_values(x, "noise", generator=torch.Generator().manual_seed(1))
    again = fill_values(x, "noise", generator=torch.Generator().manual_seed(1))
    other = fill_values(x, "noise", generator=torch.Generator().manual_seed(2))
    assert torch.equal(noise, again) and not torch.equal(noise, other)
    assert bool((noise[0] >= x[0].min()).all() and (noise[0] <= x[0].max()).all())
    channel_black = torch.tensor([-1.0, -2.0, -3.0]).reshape(1, 3, 1, 1)
    assert torch.equal(fill_values(x, channel_black)[1, :, 0, 0], torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64))


def test_blur_is_a_gaussian_with_repeated_edges():
    generator = torch.Generator().manual_seed(6)
    x = torch.rand(1, 2, 6, 7, generator=generator, dtype=torch.float64)
    sigma, radius = 1.2, 4
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    weights /= weights.sum()
    image = x[0].numpy()
    expected = np.zeros_like(image)
    for c in range(2):
        for i in range(6):
            for j in range(7):
                for a, wa in zip(range(-radius, radius + 1), weights):
                    for b, wb in zip(range(-radius, radius + 1), weights):
                        expected[c, i, j] += wa * wb * image[c, min(max(i + a, 0), 5), min(max(j + b, 0), 6)]
    np.testing.assert_allclose(gaussian_blur(x, sigma)[0].numpy(), expected, atol=1e-12)


def test_srg_changes_sign_with_the_relevance(registry):
    model = tiny_cnn()
    x, r = data()
    forward = zplug.evaluate(model, x, None, r, metric="srg", patch_size=2, steps=5)
    backward = zplug.evaluate(model, x, None, -r, metric="srg", patch_size=2, steps=5)
    np.testing.assert_allclose(backward.scores.numpy(), -forward.scores.numpy(), atol=1e-12)
    # SRG is AUC(LeRF) - AUC(MoRF) and reversing the relevance swaps the two curves
    np.testing.assert_allclose(forward.curves["morf"].scores.numpy(), backward.curves["lerf"].scores.numpy())


def test_batching_does_not_change_the_numbers(registry):
    model = tiny_cnn()
    x, r = data(n=4)
    reference = zplug.evaluate(model, x, None, r, metric="srg", patch_size=2, steps=6, baseline="noise")
    for options in ({"batch_size": 1}, {"batch_size": 5}, {"max_memory": 1}):
        other = zplug.evaluate(model, x, None, r, metric="srg", patch_size=2, steps=6, baseline="noise", **options)
        np.testing.assert_allclose(other.scores.numpy(), reference.scores.numpy(), atol=1e-12)
        for order in ("morf", "lerf"):
            np.testing.assert_allclose(other.curves[order].scores.numpy(), reference.curves[order].scores.numpy(),
                                       atol=1e-12)


def test_progress_counts_every_perturbed_input(registry):
    model = tiny_cnn()
    x, r = data(n=2)
    calls = []
    zplug.evaluate(
        model, x, None, r, metric="srg", patch_size=4, steps=3, batch_size=4, progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(4, 12), (8, 12), (12, 12)]  # 2 curves x 2 samples x 3 steps


def test_random_relevance_is_seeded_and_labelled(registry):
    model = tiny_cnn()
    x, _ = data()
    first = zplug.evaluate(model, x, None, "random", metric="srg", patch_size=2, seed=3)
    again = zplug.evaluate(model, x, None, "random", metric="srg", patch_size=2, seed=3)
    other = zplug.evaluate(model, x, None, "random", metric="srg", patch_size=2, seed=4)
    assert first.method == "random" and torch.equal(first.scores, again.scores)
    assert not torch.equal(first.scores, other.scores)


def test_explanations_one_channel_relevance_and_targets(registry):
    model = tiny_cnn()
    x, r = data()
    explanation = zplug.explain(model, x, [0, 1, 2], mapping={"4": zplug.rule("epsilon")})
    from_explanation = zplug.evaluate(model, x, [0, 1, 2], explanation, metric="pixel_flipping", steps=4)
    from_tensor = zplug.evaluate(model, x, [0, 1, 2], explanation.relevance, metric="pixel_flipping", steps=4)
    assert torch.equal(from_explanation.scores, from_tensor.scores)
    summed = zplug.evaluate(model, x, 2, r.sum(1, keepdim=True), metric="pixel_flipping", steps=4)
    assert torch.equal(summed.scores, zplug.evaluate(model, x, 2, r, metric="pixel_flipping", steps=4).scores)
    assert summed.targets.tolist() == [2, 2, 2]
    predicted = zplug.evaluate(model, x, None, r, metric="pixel_flipping", steps=4)
    assert predicted.targets.tolist() == model(x).argmax(1).tolist()


def test_the_model_comes_back_unchanged(registry):
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, r = data()
    zplug.evaluate(model, x, None, r, metric="srg", patch_size=4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks and "forward" not in vars(m) for m in model.modules())


def test_results_join_and_serialise(registry):
    model = tiny_cnn()
    x, r = data(n=4)
    whole = zplug.evaluate(model, x, None, r, metric="srg", patch_size=4, steps=3, method="m")
    parts = [zplug.evaluate(model, x[i : i + 2], None, r[i : i + 2], metric="srg", patch_size=4, steps=3, method="m")
             for i in (0, 2)]
    joined = MetricResult.concat(parts)
    np.testing.assert_allclose(joined.scores.numpy(), whole.scores.numpy(), atol=1e-12)
    data_dict = json.loads(json.dumps(joined.to_dict()))
    assert data_dict["metric"] == "srg" and data_dict["n"] == 4 and data_dict["method"] == "m"
    assert data_dict["mean"] == pytest.approx(whole.mean) and len(data_dict["curves"]["lerf"]["mean"]) == 4
    assert whole.sem == pytest.approx(float(whole.scores.std()) / 2)


def test_curve_formulas():
    curve = Curve(order="morf", counts=torch.tensor([0, 1, 3, 4]), units=4,
                  scores=torch.tensor([[1.0, 0.5, 0.25, 0.0]], dtype=torch.float64))
    assert curve.fractions.tolist() == [0.0, 0.25, 0.75, 1.0]
    assert curve.auc().item() == pytest.approx(0.25 * 0.75 + 0.5 * 0.375 + 0.25 * 0.125)
    assert curve.aopc().item() == pytest.approx((0 + 0.5 + 0.75 + 1.0) / 4)
    assert curve.step_auc().item() == pytest.approx(0.375 + 0.125)


# -- errors ------------------------------------------------------------------------------------
def test_errors(registry):
    model = tiny_cnn()
    x, r = data()
    with pytest.raises(SpecError, match=r"^relevance of shape \(3, 2, 8, 8\) does not fit inputs of shape "
                       r"\(3, 3, 8, 8\): it needs the inputs' shape or \(3, 1, 8, 8\)$"):
        zplug.evaluate(model, x, None, r[:, :2])
    with pytest.raises(SpecError, match=r"^metric 'pixel_flipping': give either 'steps' or 'per_step', not both$"):
        zplug.evaluate(model, x, None, r, metric="pixel_flipping", steps=4, per_step=2)
    with pytest.raises(SpecError, match=r"^metric 'srg' has no parameter 'patch' \(did you mean 'patch_size'\? "):
        zplug.evaluate(model, x, None, r, metric="srg", patch=2)
    with pytest.raises(SpecError, match=r"^metric 'srg': parameter 'baseline' must be one of black, white, mean, "
                       r"running_mean, blur, noise, a number or a tensor \(got 'grey'\)$"):
        zplug.evaluate(model, x, None, r, metric="srg", baseline="grey")
    with pytest.raises(SpecError, match=r"^metric 'region_perturbation': parameter 'order' must be one of morf, lerf "):
        zplug.evaluate(model, x, None, r, metric="region_perturbation", order="random")
    with pytest.raises(UnknownNameError, match=r"unknown metric 'aopcc'"):
        zplug.evaluate(model, x, None, r, metric="aopcc")
    with pytest.raises(SpecError, match=r"^a perturbation metric follows one class per sample: pass class indices, "
                       r"not a callable$"):
        zplug.evaluate(model, x, lambda out: out, r)
    with pytest.raises(SpecError, match=r"^no relevance: pass a tensor, an explanation from zplug.explain, or "):
        zplug.evaluate(model, x, None)
    with pytest.raises(SpecError, match=r"^the relevance has NaN or infinite values"):
        zplug.evaluate(model, x, None, r * float("nan"))
    metric = zplug.default_registry().metrics["srg"](steps=2)
    with pytest.raises(SpecError, match=r"^parameters steps were given with a metric instance; set them on the"):
        zplug.evaluate(model, x, None, r, metric=metric, steps=3)
    model.train()
    with pytest.raises(ModelMismatchError, match=r"^the model is in training mode: call model.eval\(\) first"):
        zplug.evaluate(model, x, None, r)


# -- plugins -----------------------------------------------------------------------------------
def test_a_plugin_metric_is_registered_through_the_hook(registry):
    import types

    import attrs

    from zplug import hookimpl
    from zplug.metrics import Metric

    @attrs.frozen(kw_only=True)
    class Confidence(Metric):
        name = "confidence"
        summary = "the clean target score (a test metric)"

        def measure(self, context: Context):
            return context.result(self, context.clean_scores("softmax"), {})

    plugin = types.ModuleType("confidence_plugin")
    plugin.zplug_register_metrics = hookimpl(lambda: [Confidence])
    registry.register(plugin, "confidence_plugin")
    assert sorted(registry.metrics) == ["confidence", "pixel_flipping", "region_perturbation", "srg"]
    assert registry.metrics.entry("confidence").plugin == "confidence_plugin"
    model = tiny_cnn()
    x, r = data()
    result = zplug.evaluate(model, x, [1, 2, 3], r, metric="confidence")
    expected = model(x).softmax(1)[torch.arange(3), torch.tensor([1, 2, 3])]
    np.testing.assert_allclose(result.scores.numpy(), expected.detach().numpy())


def test_curve_requests_can_share_batches(registry):
    """A plugin metric can ask for several curves at once; each equals the curve asked for alone."""
    model = tiny_cnn()
    x, r = data()
    context = Context(model, x, r, torch.tensor([0, 1, 2]), batch_size=7)
    units = patch_units((3, 8, 8), 2)
    requests = [CurveRequest(order=o, units=units, counts=even_counts(16, 5), baseline=b)
                for o, b in (("morf", "black"), ("lerf", "mean"))]
    together = context.curves(requests)
    for request, curve in zip(requests, together):
        (alone,) = context.curves([request])
        np.testing.assert_allclose(curve.scores.numpy(), alone.scores.numpy(), atol=1e-12)
