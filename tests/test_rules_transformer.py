"""The transformer rules (frozen_scale, softmax, product, pass on GELU) against formulas written here.

Every expected value is computed independently of the rule's code: explicit Jacobian matrices
(``torch.autograd.functional.jacobian`` of the function with its scale as a fixed number) or
element-wise sums written with ``einsum``, in float64, for several shapes.
"""

from __future__ import annotations

import pytest
import torch

import zplug.rules as pr
from zplug.engine import attach_rules
from zplug.errors import RelevanceError, SpecError
from zplug.layers import MatMul, Mul, Normalize
from zplug.rules import rule

EPS = 1e-9
DT = torch.float64


def _stab(z: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


def _relevance(module, inputs, rule_, relevance_out):
    """Relevance of each input when ``module`` (the whole model here) carries ``rule_``."""
    leaves = tuple(x.clone().requires_grad_() if isinstance(x, torch.Tensor) else x for x in inputs)
    with attach_rules(module, {"": rule_}):
        out = module(*leaves)
        grads = torch.autograd.grad(
            out, [x for x in leaves if isinstance(x, torch.Tensor)], relevance_out, allow_unused=True
        )
    return out.detach(), grads


def _random(*shape, generator):
    return torch.randn(*shape, dtype=DT, generator=generator)


# -- frozen_scale ------------------------------------------------------------------------------------
def _frozen_layer_norm_expected(x, y, weight, bias, normalized, relevance, eps_norm):
    """``x * A^T (R / stab(y))`` with ``A`` the Jacobian of the layer norm at a fixed scale, per row."""
    rows = x.reshape(-1, normalized)
    n = normalized
    out = torch.empty_like(rows)
    scaled = (relevance / _stab(y)).reshape(-1, n)
    for r in range(rows.shape[0]):
        row = rows[r]
        scale = float(1 / torch.sqrt(row.var(unbiased=False) + eps_norm))  # a plain number: held constant

        def affine(v, scale=scale):
            return (v - v.mean()) * scale * weight.reshape(-1) + bias.reshape(-1)

        jac = torch.autograd.functional.jacobian(affine, row)  # (n, n): d y_i / d x_j
        out[r] = row * (jac.T @ scaled[r])
    return out.reshape(x.shape)


@pytest.mark.parametrize(("shape", "normalized"), [((2, 5, 8), (8,)), ((3, 4, 6), (4, 6)), ((7, 3), (3,))])
def test_frozen_scale_layer_norm_matches_the_jacobian_formula(shape, normalized):
    g = torch.Generator().manual_seed(0)
    ln = torch.nn.LayerNorm(normalized, eps=1e-5).double()
    with torch.no_grad():
        ln.weight.copy_(_random(*normalized, generator=g))
        ln.bias.copy_(_random(*normalized, generator=g))
    x = _random(*shape, generator=g)
    relevance_out = _random(*shape, generator=g)
    y, (got,) = _relevance(ln, (x,), pr.FrozenScale(epsilon=EPS), relevance_out)
    n = int(torch.tensor(normalized).prod())
    expected = _frozen_layer_norm_expected(x, y, ln.weight, ln.bias, n, relevance_out, ln.eps)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_frozen_scale_without_bias_conserves_and_zero_params_drops_the_bias():
    g = torch.Generator().manual_seed(1)
    ln = torch.nn.LayerNorm(6).double()
    with torch.no_grad():
        ln.weight.copy_(_random(6, generator=g))
        ln.bias.copy_(_random(6, generator=g))
    x = _random(4, 6, generator=g)
    relevance_out = _random(4, 6, generator=g)
    tiny = pr.FrozenScale(epsilon=1e-14, zero_params=["bias"])
    _, (got,) = _relevance(ln, (x,), tiny, relevance_out)
    # Without bias, y = A x exactly; row sums of R_x equal the row sums of R_y.
    torch.testing.assert_close(got.sum(-1), relevance_out.sum(-1), rtol=1e-9, atol=1e-12)
    centred = x - x.mean(-1, keepdim=True)
    inverse_std = 1 / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)
    y0 = centred * inverse_std * ln.weight
    scaled = relevance_out / _stab(y0, 1e-14)
    # A^T g = s * (w g - mean(w g)) for the centring map, written out.
    wg = scaled * ln.weight
    expected = x * inverse_std * (wg - wg.mean(-1, keepdim=True))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("groups", "shape"), [(2, (3, 4, 5)), (3, (2, 6, 2, 3)), (1, (2, 4))])
def test_frozen_scale_group_norm_matches_the_per_group_formula(groups, shape):
    g = torch.Generator().manual_seed(2)
    gn = torch.nn.GroupNorm(groups, shape[1]).double()
    with torch.no_grad():
        gn.weight.copy_(_random(shape[1], generator=g))
        gn.bias.copy_(_random(shape[1], generator=g))
    x = _random(*shape, generator=g)
    relevance_out = _random(*shape, generator=g)
    y, (got,) = _relevance(gn, (x,), pr.FrozenScale(epsilon=EPS), relevance_out)
    channel = (1, -1) + (1,) * (x.ndim - 2)
    w = gn.weight.reshape(channel)
    wg = (relevance_out / _stab(y)) * w
    expected = torch.empty_like(x)
    per_group = shape[1] // groups
    for n in range(shape[0]):
        for k in range(groups):
            block = slice(k * per_group, (k + 1) * per_group)
            xs = x[n, block]
            inverse_std = 1 / torch.sqrt(xs.var(unbiased=False) + gn.eps)
            expected[n, block] = xs * inverse_std * (wg[n, block] - wg[n, block].mean())
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.skipif(not hasattr(torch.nn, "RMSNorm"), reason="torch.nn.RMSNorm needs torch >= 2.4")
@pytest.mark.parametrize("shape", [(2, 3, 5), (4, 7)])
def test_frozen_scale_rms_norm_is_the_identity_without_bias(shape):
    g = torch.Generator().manual_seed(3)
    rms = torch.nn.RMSNorm(shape[-1], eps=1e-6).double()
    with torch.no_grad():
        rms.weight.copy_(_random(shape[-1], generator=g))
    x = _random(*shape, generator=g)
    relevance_out = _random(*shape, generator=g)
    y, (got,) = _relevance(rms, (x,), pr.FrozenScale(epsilon=EPS), relevance_out)
    torch.testing.assert_close(got, relevance_out * y / _stab(y), rtol=1e-9, atol=1e-12)


def test_frozen_scale_on_normalize_and_on_a_permuting_subclass():
    from torchvision.models.convnext import LayerNorm2d

    g = torch.Generator().manual_seed(4)
    x = _random(2, 5, 3, generator=g)
    relevance_out = _random(2, 5, 3, generator=g)
    y, (got,) = _relevance(Normalize(dim=1).double(), (x,), pr.FrozenScale(epsilon=EPS), relevance_out)
    torch.testing.assert_close(got, relevance_out * y / _stab(y), rtol=1e-9, atol=1e-12)

    ln2d = LayerNorm2d(4).double()  # normalises over dimension 1 by permuting around F.layer_norm
    with torch.no_grad():
        ln2d.weight.copy_(_random(4, generator=g))
        ln2d.bias.copy_(_random(4, generator=g))
    x = _random(2, 4, 3, 3, generator=g)
    relevance_out = _random(2, 4, 3, 3, generator=g)
    y, (got,) = _relevance(ln2d, (x,), pr.FrozenScale(epsilon=EPS), relevance_out)
    last = x.permute(0, 2, 3, 1)
    expected = _frozen_layer_norm_expected(
        last, y.permute(0, 2, 3, 1), ln2d.weight, ln2d.bias, 4, relevance_out.permute(0, 2, 3, 1), ln2d.eps
    ).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_frozen_scale_refuses_a_module_without_a_normalising_function():
    with pytest.raises(RelevanceError) as info:
        _relevance(torch.nn.Tanh(), (torch.randn(2, 3),), pr.FrozenScale(), torch.ones(2, 3))
    assert str(info.value) == (
        "rule 'frozen_scale' on layer '' (Tanh): its forward calls none of F.layer_norm, F.group_norm, F.rms_norm, "
        "F.normalize, so there is no scale to hold constant; give this layer another rule, or write its "
        "normalisation with one of these functions"
    )


# -- softmax -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "dim"), [((2, 3, 5), -1), ((4, 6), 0), ((2, 3, 4, 4), 2)])
def test_softmax_rule_is_the_taylor_expansion_at_the_input(shape, dim):
    g = torch.Generator().manual_seed(5)
    x = _random(*shape, generator=g)
    relevance_out = _random(*shape, generator=g)
    _, (got,) = _relevance(torch.nn.Softmax(dim=dim), (x,), pr.Softmax(), relevance_out)
    # DTD at x: R_x_i = x_i sum_j (d s_j / d x_i) R_j / s_j, with the full Jacobian of the softmax.
    s = torch.softmax(x, dim)
    jac = torch.autograd.functional.jacobian(lambda v: torch.softmax(v, dim), x)  # shape + shape
    flat = jac.reshape(x.numel(), x.numel())
    expected = x * (flat.T @ (relevance_out / s).reshape(-1)).reshape(shape)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_softmax_rule_treats_masked_minus_infinity_as_zero():
    x = torch.tensor([[0.5, float("-inf"), -1.0, 2.0]], dtype=DT)
    relevance_out = torch.tensor([[0.3, 0.7, -0.2, 1.0]], dtype=DT)
    _, (got,) = _relevance(torch.nn.Softmax(dim=-1), (x,), pr.Softmax(), relevance_out)
    s = torch.softmax(x, -1)
    total = relevance_out.sum()
    expected = torch.tensor([[0.5 * (0.3 - s[0, 0] * total), 0.0, -1.0 * (-0.2 - s[0, 2] * total),
                              2.0 * (1.0 - s[0, 3] * total)]], dtype=DT)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


# -- product -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape_a", "shape_b", "scale"),
    [((2, 3, 4), (2, 4, 5), None), ((3, 4), (2, 4, 5), 0.5), ((2, 2, 3, 6), (2, 2, 6, 3), 0.125)],
)
def test_product_on_matmul_splits_the_epsilon_shares_uniformly(shape_a, shape_b, scale):
    g = torch.Generator().manual_seed(6)
    a, b = _random(*shape_a, generator=g), _random(*shape_b, generator=g)
    module = MatMul(scale=scale)
    out = torch.matmul(a, b) * (1.0 if scale is None else scale)
    relevance_out = _random(*out.shape, generator=g)
    _, (got_a, got_b) = _relevance(module, (a, b), pr.Product(epsilon=EPS), relevance_out)
    ratio = relevance_out / _stab(out) * (1.0 if scale is None else scale)
    a_full = a.expand(*out.shape[:-2], *a.shape[-2:])
    share_a = torch.einsum("...ik,...kj,...ij->...ik", a_full, b, ratio)
    share_b = torch.einsum("...ik,...kj,...ij->...kj", a_full, b, ratio)
    share_a = share_a.sum(dim=tuple(range(share_a.ndim - a.ndim))) if share_a.ndim > a.ndim else share_a
    torch.testing.assert_close(got_a, share_a / 2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_b, share_b / 2, rtol=1e-9, atol=1e-12)
    # Uniform epsilon rule: conservative up to the stabiliser.
    torch.testing.assert_close(got_a.sum() + got_b.sum(), relevance_out.sum(), rtol=1e-6, atol=1e-9)


def test_product_to_value_gives_everything_to_the_value_and_nothing_through_scores():
    g = torch.Generator().manual_seed(7)
    attn, v = torch.softmax(_random(2, 3, 3, generator=g), -1), _random(2, 3, 4, generator=g)
    relevance_out = _random(2, 3, 4, generator=g)
    cp = pr.Product(epsilon=EPS, to="value")
    out, (got_attn, got_v) = _relevance(MatMul(value=1), (attn, v), cp, relevance_out)
    expected_v = torch.einsum("bik,bkj,bij->bkj", attn, v, relevance_out / _stab(out))
    assert got_attn is None
    torch.testing.assert_close(got_v, expected_v, rtol=1e-9, atol=1e-12)
    q, k = _random(2, 3, 4, generator=g), _random(2, 4, 3, generator=g)
    leaves = (q.requires_grad_(), k.requires_grad_())
    scores = MatMul(scale=0.5)
    with attach_rules(scores, {"": cp}):
        # No relevance goes through q @ k^T: the engine detaches both, so the scores keep no graph at all
        # (and nothing behind them is kept for a backward pass).
        assert not scores(*leaves).requires_grad
    with attach_rules(scores, {"": cp}, observers=(lambda *a: None,)):  # watched: every operation stays visible
        out = scores(*leaves)
        assert torch.autograd.grad(out, leaves, relevance_out[..., :3], allow_unused=True) == (None, None)


def test_detaching_what_gets_no_relevance_changes_no_relevance():
    """cp_lrp on a small attention block: the same relevance with and without the detaching (observers off/on)."""
    g = torch.Generator().manual_seed(11)
    attn_logits, v = _random(2, 3, 3, generator=g), _random(2, 3, 4, generator=g)
    relevance_out = _random(2, 3, 4, generator=g)
    cp = pr.Product(epsilon=EPS, to="value")
    context = MatMul(value=1)
    results = []
    for observers in ((), (lambda *a: None,)):
        x, u = attn_logits.clone().requires_grad_(), v.clone().requires_grad_()
        with attach_rules(context, {"": cp}, observers=observers):
            out = context(torch.softmax(x, -1), u * 1.0)
            results.append(torch.autograd.grad(out, (x, u), relevance_out, allow_unused=True))
    assert results[0][0] is None and results[1][0] is None
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)


@pytest.mark.parametrize(("shape_gate", "shape_value"), [((2, 5), (2, 5)), ((2, 1, 3), (2, 4, 3))])
def test_product_on_a_gate(shape_gate, shape_value):
    g = torch.Generator().manual_seed(8)
    gate, value = _random(*shape_gate, generator=g), _random(*shape_value, generator=g)
    out = gate * value
    relevance_out = _random(*out.shape, generator=g)
    ratio = relevance_out * out / _stab(out)  # R * O / stab(O): every operand's full share
    _, (got_gate, got_value) = _relevance(Mul(value=1), (gate, value), pr.Product(epsilon=EPS), relevance_out)
    broadcast = tuple(i for i, n in enumerate(shape_gate) if n == 1)
    full_gate = ratio.sum(dim=broadcast, keepdim=True) if broadcast else ratio
    torch.testing.assert_close(got_gate, full_gate / 2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_value, ratio / 2, rtol=1e-9, atol=1e-12)
    _, (got_gate, got_value) = _relevance(Mul(value=1), (gate, value), pr.Product(epsilon=EPS, to="value"),
                                          relevance_out)
    assert got_gate is None
    torch.testing.assert_close(got_value, ratio, rtol=1e-9, atol=1e-12)


def test_product_gives_constant_factors_nothing():
    g = torch.Generator().manual_seed(9)
    x = _random(2, 4, generator=g)
    scale = torch.nn.Parameter(_random(4, generator=g))
    relevance_out = _random(2, 4, generator=g)
    for to in ("all", "value"):
        module = Mul()
        leaf = x.clone().requires_grad_()
        with attach_rules(module, {"": pr.Product(epsilon=EPS, to=to)}):
            out = module(scale, leaf, 3.0)
            got_scale, got_x = torch.autograd.grad(out, [scale, leaf], relevance_out, allow_unused=True)
        assert got_scale is None
        torch.testing.assert_close(got_x, relevance_out * out.detach() / _stab(out.detach()), rtol=1e-9, atol=1e-12)


def test_product_with_three_operands():
    g = torch.Generator().manual_seed(10)
    xs = [_random(3, 4, generator=g) for _ in range(3)]
    out = xs[0] * xs[1] * xs[2]
    relevance_out = _random(3, 4, generator=g)
    _, got = _relevance(Mul(), xs, pr.Product(epsilon=EPS), relevance_out)
    for r in got:
        torch.testing.assert_close(r, relevance_out * out / _stab(out) / 3, rtol=1e-9, atol=1e-12)


def test_product_on_another_module_uses_its_own_vector_jacobian_product():
    # nn.Bilinear is linear in each of its two inputs.
    g = torch.Generator().manual_seed(11)
    bilinear = torch.nn.Bilinear(4, 5, 3, bias=False).double()
    x1, x2 = _random(6, 4, generator=g), _random(6, 5, generator=g)
    relevance_out = _random(6, 3, generator=g)
    out, (r1, r2) = _relevance(bilinear, (x1, x2), pr.Product(epsilon=EPS), relevance_out)
    ratio = relevance_out / _stab(out)
    w = bilinear.weight
    torch.testing.assert_close(r1, torch.einsum("ni,kij,nj,nk->ni", x1, w, x2, ratio) / 2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(r2, torch.einsum("ni,kij,nj,nk->nj", x1, w, x2, ratio) / 2, rtol=1e-9, atol=1e-12)


# -- identity on non-linearities, parameters ---------------------------------------------------------
@pytest.mark.parametrize("activation", [torch.nn.GELU(), torch.nn.SiLU(), torch.nn.Tanh()])
def test_pass_is_the_identity_rule_on_smooth_non_linearities(activation):
    g = torch.Generator().manual_seed(12)
    x = _random(3, 5, generator=g)
    relevance_out = _random(3, 5, generator=g)
    _, (got,) = _relevance(activation, (x,), pr.Pass(), relevance_out)
    torch.testing.assert_close(got, relevance_out, rtol=0, atol=0)


def test_rules_are_registered_with_their_parameters():
    assert rule("product", to="value", epsilon=0.1) == pr.Product(to="value", epsilon=0.1)
    assert rule("frozen_scale", zero_params="bias") == pr.FrozenScale(zero_params=("bias",))
    assert repr(rule("softmax")) == "softmax()"
    with pytest.raises(SpecError) as info:
        rule("product", to="values")
    assert str(info.value) == "rule 'product': parameter 'to' must be 'all' or 'value' (got 'values')"
