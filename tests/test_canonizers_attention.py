"""The attention canonizers: same outputs as the original, rules reach every operation, exact restore."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import zplug
from zplug.canonizers import CanonizerError
from zplug.canonizers.attention import FunctionalOps, MultiheadAttentionCanonizer
from zplug.canonizers.rewrite import ForwardRewrite, Rewrite
from zplug.layers import MatMul, Mul, ScaledDotProductAttention, Sum

DT = torch.float64


def _state(model: torch.nn.Module):
    """Everything that must come back: tensors (bit for bit), instance attributes, children, hooks."""
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layout = [(name, tuple(sorted(m.__dict__)), tuple(m._modules), len(m._forward_hooks))
              for name, m in model.named_modules()]
    return tensors, layout


def _assert_same_state(model, before):
    tensors, layout = _state(model)
    assert list(tensors) == list(before[0])
    for key, value in before[0].items():
        assert torch.equal(tensors[key], value), key
    assert layout == before[1]


# -- multihead_attention -----------------------------------------------------------------------------
def _mha(batch_first: bool, kdim=None, vdim=None, bias=True) -> torch.nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=vdim, bias=bias)
    with torch.no_grad():
        for p in mha.parameters():
            p.normal_(0, 0.3)
    return mha.double().eval()


CASES = {
    "self, batch first": (True, {}, None),
    "sequence first, weights per head": (False, {"average_attn_weights": False}, None),
    "padding mask": (True, {"key_padding_mask": "padding"}, None),
    "float mask": (True, {"attn_mask": "float"}, None),
    "bool causal mask, no weights": (True, {"attn_mask": "causal", "need_weights": False}, None),
    "3-d mask": (True, {"attn_mask": "3d"}, None),
    "other key and value sizes": (True, {}, (5, 3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_multihead_attention_rewrite_computes_the_same_output_and_weights(case):
    batch_first, kwargs, dims = CASES[case]
    kdim, vdim = dims if dims else (None, None)
    mha = _mha(batch_first, kdim, vdim)
    g = torch.Generator().manual_seed(1)
    n, length, source = 3, 4, 5

    def seq(size, count):
        shape = (n, count, size) if batch_first else (count, n, size)
        return torch.randn(*shape, dtype=DT, generator=g)

    query, key, value = seq(8, length), seq(kdim or 8, source), seq(vdim or 8, source)
    masks = {
        "padding": torch.tensor([[False] * 4 + [True]] * n),
        "float": torch.randn(length, source, dtype=DT, generator=g),
        "causal": torch.ones(length, source, dtype=torch.bool).triu(1),
        "3d": torch.randn(n * 2, length, source, dtype=DT, generator=g),
    }
    kwargs = {k: masks.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    expected = mha(query, key, value, **kwargs)
    before = _state(mha)
    with MultiheadAttentionCanonizer().applied(mha):
        assert isinstance(mha.attention, ScaledDotProductAttention)
        for _ in range(2):  # the first call is checked against the original, the second is not
            got = mha(query, key, value, **kwargs)
            torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
            if expected[1] is None:
                assert got[1] is None
            else:
                torch.testing.assert_close(got[1], expected[1], rtol=1e-12, atol=1e-12)
    _assert_same_state(mha, before)


def test_multihead_attention_unbatched():
    mha = _mha(True)
    x = torch.randn(4, 8, dtype=DT)
    expected = mha(x, x, x)
    with MultiheadAttentionCanonizer().applied(mha):
        got = mha(x, x, x)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-12, atol=1e-12)


def test_multihead_attention_projections_share_storage_and_rules_reach_them():
    mha = _mha(True)
    with MultiheadAttentionCanonizer().applied(mha):
        assert mha.q_proj.weight.data_ptr() == mha.in_proj_weight.data_ptr()
        assert mha.v_proj.bias.data_ptr() == mha.in_proj_bias[16:].data_ptr()
        names = {name for name, _ in mha.named_modules()}
        assert {"q_proj", "k_proj", "v_proj", "attention.scores", "attention.softmax", "attention.context"} <= names
        seen = []
        rule = zplug.rule("epsilon")
        assignment = {name: rule for name in ("q_proj", "k_proj", "v_proj", "out_proj")}
        x = torch.randn(2, 3, 8, dtype=DT, requires_grad=True)
        with zplug.attach_rules(mha, assignment, observers=(lambda b, *_: seen.append(b.name),)):
            out, _ = mha(x, x, x, need_weights=False)
            out.sum().backward()
        assert sorted(seen) == ["k_proj", "out_proj", "q_proj", "v_proj"]


def test_multihead_attention_with_bias_kv_is_refused():
    mha = torch.nn.MultiheadAttention(8, 2, add_bias_kv=True)
    model = torch.nn.Sequential(mha)
    with pytest.raises(CanonizerError) as info:
        with MultiheadAttentionCanonizer().applied(model):
            pass
    assert str(info.value) == (
        "multihead_attention: module '0' uses add_bias_kv or add_zero_attn, which the rewrite does not reproduce; "
        "leave this canonizer out for this model"
    )


# -- the first-call check ----------------------------------------------------------------------------
class _Wrong(ForwardRewrite):
    """A rewrite that doubles the output: the check must catch it."""

    name = "wrong"
    summary = "doubles the output"

    def rewrites(self, model):
        layer = model[0]
        return [Rewrite(name="0", module=layer, forward=lambda x: 2 * torch.nn.Linear.forward(layer, x),
                        children={"extra": torch.nn.Identity()}, what="doubles")]


def test_a_rewrite_that_changes_the_output_is_undone_and_refused():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2)).double()
    before = _state(model)
    with pytest.raises(CanonizerError) as info:
        with _Wrong().applied(model):
            try:
                model(torch.ones(1, 3, dtype=DT))
            finally:
                _assert_same_state(model, before)  # undone at once, before the block ends
    message = str(info.value)
    assert message.startswith("wrong: the rewritten forward of '0' (Linear) does not compute what the original "
                              "computes (largest difference ")
    assert message.endswith("the rewrite is undone. The module probably uses a feature the rewrite does not "
                            "reproduce (Python control flow that torch.fx fixed while tracing): leave this canonizer "
                            "out, or write a canonizer for this module")
    _assert_same_state(model, before)


# -- functional_ops ----------------------------------------------------------------------------------
class _Block(torch.nn.Module):
    """A pre-norm transformer block written with functions: matmul, softmax, sdpa, gates, residuals."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.proj = torch.nn.Linear(dim, dim, bias=False)
        self.gate = torch.nn.Linear(dim, 2 * dim, bias=False)
        self.up = torch.nn.Linear(dim, 2 * dim, bias=False)
        self.down = torch.nn.Linear(2 * dim, dim, bias=False)
        self.act = torch.nn.SiLU()
        self.layer_scale = torch.nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x):
        n, length, dim = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        attn = F.softmax(scores, dim=-1)
        mixed = (attn @ v).transpose(1, 2).reshape(n, length, dim)
        y = x + self.layer_scale * self.proj(mixed)
        q2, k2, v2 = (t.reshape(n, length, self.heads, -1).transpose(1, 2) for t in (y, y, y))
        y = y + F.scaled_dot_product_attention(q2, k2, v2).transpose(1, 2).reshape(n, length, dim)
        return y + self.down(self.act(self.gate(y)) * self.up(y))


class _Untraceable(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value: fx cannot trace it
            return x
        return -x


def _block_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(_Block(), _Untraceable()).double().eval()


def test_functional_ops_routes_every_operation_and_computes_the_same():
    model = _block_model()
    x = torch.randn(2, 5, 8, dtype=DT)
    expected = model(x)
    before = _state(model)
    canonizer = FunctionalOps()
    assert canonizer.describe(model) == [
        "0 (_Block): 2 matmul, 3 mul, 1 softmax, 3 sum, 1 attention as modules",
        "1 (_Untraceable): not traceable (symbolically traced variables cannot be used as inputs to control flow)",
    ]
    original_sdpa = F.scaled_dot_product_attention
    with canonizer.applied(model):
        assert F.scaled_dot_product_attention is original_sdpa  # nothing global is patched
        block = model[0]
        kinds = {name: type(m) for name, m in block.named_children()}
        assert kinds["matmul"] is MatMul and kinds["matmul_1"] is MatMul
        assert block.matmul.value is None and block.matmul_1.value == 1  # scores; attn @ v
        assert kinds["softmax"] is torch.nn.Softmax and kinds["attention"] is ScaledDotProductAttention
        assert kinds["sum"] is Sum
        # the division by sqrt(d) and the layer scale become constant factors, the gate knows its value
        assert [block.mul.value, block.mul_1.value, block.mul_2.value] == [None, None, 1]
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    _assert_same_state(model, before)


def test_cp_lrp_conserves_on_the_functional_block():
    model = _block_model()
    x = torch.randn(2, 5, 8, dtype=DT)
    mapping = zplug.resolve(model[0], "cp_lrp", epsilon=1e-12, stabilizer=1e-12, canonizers=["functional_ops"],
                            zero_params=["bias"])
    assert not mapping.unmapped
    explanation = zplug.explain(model[0], x, target=lambda out: out.detach(), mapping=mapping, ledger=True)
    total = float(explanation.output.sum())
    assert abs(float(explanation.relevance.sum()) - total) <= 1e-9 * abs(total)
    assert abs(explanation.ledger.leaked) <= 1e-9 * abs(total)


def test_suggestions_for_attention():
    from zplug.canonizers import auto_canonizers
    from zplug.registry import PluginRegistry

    registry = PluginRegistry(autoload=False)
    names = [name for name, _, _ in auto_canonizers(_block_model(), registry)]
    assert names == ["functional_ops"]  # it covers residual_sum
    mha_model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.MultiheadAttention(8, 2))
    suggested = auto_canonizers(mha_model, registry)
    assert [(n, r) for n, r, _ in suggested] == [
        ("multihead_attention", "1 MultiheadAttention module(s), e.g. '1'")
    ]


def test_mul_and_matmul_modules_compute_the_functions():
    a, b = torch.randn(2, 3, 4, dtype=DT), torch.randn(4, 5, dtype=DT)
    torch.testing.assert_close(MatMul(scale=0.5)(a, b), torch.matmul(a, b) * 0.5, rtol=0, atol=0)
    torch.testing.assert_close(Mul()(a, 2.0, a), a * 2.0 * a, rtol=0, atol=0)
    with pytest.raises(ValueError, match="MatMul: value must be None, 0 or 1"):
        MatMul(value=2)


def test_a_proven_rewrite_is_not_checked_again_until_the_module_changes():
    model = _block_model()
    x = torch.randn(2, 5, 8, dtype=DT)
    canonizer = FunctionalOps()
    runs = []

    def count(module, args, output):
        runs.append(1)

    handle = model[0].norm.register_forward_hook(count)  # runs once per forward of the block
    try:
        with canonizer.applied(model):
            model(x)
        assert len(runs) == 2  # the original forward (the check) and the rewritten one
        with canonizer.applied(model):
            model(x)
        assert len(runs) == 3  # proven and unchanged: no check
        with torch.no_grad():
            model[0].proj.weight.mul_(2.0)  # an in-place update: the proof no longer holds
        with canonizer.applied(model):
            model(x)
        assert len(runs) == 5
    finally:
        handle.remove()


def test_the_rewritten_forward_is_built_once_and_again_when_the_module_changes():
    model = _block_model()
    x = torch.randn(2, 5, 8, dtype=DT)
    canonizer = FunctionalOps()
    forwards = []
    for _ in range(2):
        with canonizer.applied(model):
            forwards.append(model[0].forward.rewrite.forward)
            model(x)
    assert forwards[0] is forwards[1]  # the same compiled GraphModule: nothing generated again
    model[0].layer_scale = torch.nn.Parameter(torch.full((8,), 2.0, dtype=DT))  # a new object, not an update
    expected = model(x)
    with canonizer.applied(model):
        assert model[0].forward.rewrite.forward is not forwards[0]
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)  # computes with the new one
