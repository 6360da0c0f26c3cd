"""The ``recompute`` rule: the inner rules' relevance, with only the module's inputs kept for the backward pass."""

from __future__ import annotations

import pytest
import torch

import zplug
from zplug.layers import ScaledDotProductAttention
from zplug.rules import Epsilon, FrozenScale, Norm, Product, Recompute, Softmax

DT = torch.float64
HEADS, LENGTH, SIZE = 2, 7, 3  # length differs from every other size: a (length x length) tensor is recognisable


class Block(torch.nn.Module):
    """Projections, attention as one module (scores, bias, softmax, context), output projection, LayerNorm."""

    def __init__(self, causal: bool) -> None:
        super().__init__()
        width = HEADS * SIZE
        self.q, self.k, self.v, self.out = (torch.nn.Linear(width, width) for _ in range(4))
        self.attention = ScaledDotProductAttention()
        self.norm = torch.nn.LayerNorm(width)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def heads(t):
            return t.reshape(t.shape[0], LENGTH, HEADS, SIZE).transpose(1, 2)

        bias = torch.linspace(-1, 1, LENGTH * LENGTH, dtype=x.dtype).reshape(LENGTH, LENGTH)
        context = self.attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), bias, is_causal=self.causal)
        return self.norm(self.out(context.transpose(1, 2).reshape(x.shape)))


def _rules(to: str, recompute: bool) -> dict:
    rules = {name: Epsilon(epsilon=1e-9) for name in ("q", "k", "v", "out")}
    rules.update({
        "norm": FrozenScale(epsilon=1e-9), "attention.scores": Product(to=to, epsilon=1e-9),
        "attention.bias": Norm(stabilizer=1e-9), "attention.softmax": Softmax(),
        "attention.context": Product(to=to, epsilon=1e-9),
    })  # fmt: skip
    if recompute:
        rules["attention"] = Recompute()
    return rules


def _model(causal: bool) -> Block:
    torch.manual_seed(0)
    return Block(causal).to(DT).eval()


def _saved_shapes(model, x, rules) -> list[tuple[int, ...]]:
    """The shapes of every tensor the forward pass keeps for the backward pass under ``rules``."""
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with zplug.attach_rules(model, rules), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x.requires_grad_())
    return shapes


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("to", ["all", "value"])
def test_recompute_gives_exactly_the_relevance_of_the_inner_rules(causal, to):
    model = _model(causal)
    x = torch.randn(2, LENGTH, HEADS * SIZE, dtype=DT)
    plain = zplug.explain(model, x, lambda out: out, mapping=_rules(to, recompute=False))
    recomputed = zplug.explain(model, x, lambda out: out, mapping=_rules(to, recompute=True))
    assert torch.equal(recomputed.output, plain.output)
    assert torch.equal(recomputed.relevance, plain.relevance)
    assert float(plain.relevance.abs().sum()) > 0


def test_recompute_keeps_no_length_by_length_tensor():
    model = _model(causal=True)
    x = torch.randn(2, LENGTH, HEADS * SIZE, dtype=DT)
    square = (2, HEADS, LENGTH, LENGTH)
    assert square in _saved_shapes(model, x, _rules("all", recompute=False))  # scores and weights are kept
    kept = _saved_shapes(model, x, _rules("all", recompute=True))
    assert square not in kept
    assert kept.count((2, HEADS, LENGTH, SIZE)) == 3  # q, k and v


def test_the_ledger_sees_the_rules_inside_a_recomputed_module():
    model = _model(causal=False)
    x = torch.randn(2, LENGTH, HEADS * SIZE, dtype=DT)
    plain = zplug.explain(model, x, lambda out: out, mapping=_rules("all", recompute=False), ledger=True)
    recomputed = zplug.explain(model, x, lambda out: out, mapping=_rules("all", recompute=True), ledger=True)
    names = [entry.name for entry in recomputed.ledger.entries]
    assert "attention.softmax" in names and "attention.scores" in names and "attention" not in names
    assert names == [entry.name for entry in plain.ledger.entries]
    assert recomputed.ledger.absorbed == pytest.approx(plain.ledger.absorbed, rel=1e-12)
    assert torch.equal(recomputed.relevance, plain.relevance)


def test_an_error_inside_a_recomputed_module_names_the_inner_layer_and_restores_the_model():
    model = _model(causal=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, LENGTH, HEADS * SIZE, dtype=DT)
    rules = _rules("all", recompute=True)
    rules["attention.softmax"] = FrozenScale()  # a softmax has no normalising scale to hold constant
    with pytest.raises(zplug.errors.RelevanceError, match="rule 'frozen_scale' on layer 'attention.softmax'"):
        zplug.explain(model, x, lambda out: out, mapping=rules)
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_attnlrp_and_cp_lrp_give_attention_fused_attention():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.TransformerEncoderLayer(6, 2, 12, dropout=0.0, batch_first=True)).eval()
    for preset, to in (("attnlrp", "all"), ("cp_lrp", "value")):
        mapping = zplug.resolve(model, preset)
        assert mapping["0.self_attn.attention"].rule_name == "fused_attention"
        assert mapping["0.self_attn.attention"].rule.to == to
        assert mapping["0.self_attn.attention.softmax"].rule_name == "softmax"
        assert not mapping.coverage.uncovered


def test_relevance_through_a_recomputed_module_is_differentiable_with_create_graph():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Softplus(), torch.nn.Linear(5, 3))
    ).double()
    inner = {"0.0": Epsilon(epsilon=0.1), "0.2": Epsilon(epsilon=0.1)}
    relevance_out = torch.randn((2, 3), dtype=DT, requires_grad=True)

    def relevance(x, relevance_out, recompute=True):
        rules = {**inner, "0": Recompute()} if recompute else inner
        with zplug.attach_rules(model, rules):
            (rel,) = torch.autograd.grad(model(x), x, relevance_out, create_graph=True)
        return rel

    x = torch.randn((2, 4), dtype=DT, requires_grad=True)
    torch.testing.assert_close(relevance(x, relevance_out), relevance(x, relevance_out, recompute=False),
                               rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(relevance, (x, relevance_out), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_a_recomputed_forward_draws_the_same_dropout_masks():
    class Dropped(Block):
        def forward(self, x):
            def heads(t):
                return t.reshape(t.shape[0], LENGTH, HEADS, SIZE).transpose(1, 2)

            context = self.attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), dropout_p=0.5)
            return self.out(context.transpose(1, 2).reshape(x.shape))

    torch.manual_seed(0)
    model = Dropped(causal=False).to(DT).train()
    x = torch.randn(2, LENGTH, HEADS * SIZE, dtype=DT)
    rules = {k: v for k, v in _rules("all", recompute=False).items() if k not in ("norm", "attention.bias")}
    results = []
    for recompute in (False, True):
        torch.manual_seed(1)
        mapping = {**rules, "attention": Recompute()} if recompute else rules
        results.append(zplug.explain(model, x, lambda out: out, mapping=mapping))
        results.append(torch.rand(1))  # the generator is where the forward pass left it
    plain, after_plain, recomputed, after_recomputed = results
    assert torch.equal(recomputed.output, plain.output)
    assert torch.equal(recomputed.relevance, plain.relevance)
    assert torch.equal(after_recomputed, after_plain)


class Learned(Block):
    """A learned relative-position bias (a parameter that broadcasts over the batch) and a per-sample mask."""

    def __init__(self, per_sample_mask: bool) -> None:
        super().__init__(causal=False)
        self.per_sample_mask = per_sample_mask
        self.position = torch.nn.Parameter(torch.linspace(-1, 1, LENGTH * LENGTH).reshape(LENGTH, LENGTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def heads(t):
            return t.reshape(t.shape[0], LENGTH, HEADS, SIZE).transpose(1, 2)

        mask = self.position  # (length, length): broadcast over the batch, its relevance summed over the groups
        if self.per_sample_mask:
            keep = torch.ones(x.shape[0], 1, LENGTH, LENGTH, dtype=torch.bool)
            keep[1:, :, :, -2:] = False  # every sample but the first ignores the last two keys
            mask = torch.zeros(keep.shape, dtype=x.dtype).masked_fill(~keep, float("-inf")) + self.position
        context = self.attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), mask)
        return self.norm(self.out(context.transpose(1, 2).reshape(x.shape)))


@pytest.mark.parametrize("samples", [1, 2, 5])
@pytest.mark.parametrize("per_sample_mask", [False, True])
def test_recomputing_in_groups_of_samples_gives_the_same_relevance(samples, per_sample_mask):
    torch.manual_seed(0)
    model = Learned(per_sample_mask).to(DT).eval()
    x = torch.randn(5, LENGTH, HEADS * SIZE, dtype=DT, requires_grad=True)
    relevance_out = torch.randn(5, LENGTH, HEADS * SIZE, dtype=DT)

    def relevance(rule):
        with zplug.attach_rules(model, {**_rules("all", recompute=False), "attention": rule}):
            return torch.autograd.grad(model(x), (x, model.position), relevance_out)

    whole = relevance(Recompute())
    grouped = relevance(Recompute(samples=samples))
    for ours, theirs in zip(grouped, whole):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    assert float(whole[1].abs().sum()) > 0  # the broadcast bias gets relevance from every group


def test_samples_must_be_a_non_negative_integer():
    with pytest.raises(zplug.errors.SpecError, match=r"parameter 'samples' must be an integer >= 0 \(got -1\)"):
        zplug.rules.rule("recompute", samples=-1)


def test_an_output_without_relevance_costs_no_extra_forward():
    """Zeros for an unused output come from its shape: the module runs once forward and once recomputed."""

    class TwoOutputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = torch.nn.Linear(3, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            y = self.inner(x)
            return y, y * 2

    torch.manual_seed(0)
    model = torch.nn.Sequential(TwoOutputs()).to(DT)
    x = torch.randn(2, 3, dtype=DT, requires_grad=True)
    relevance_out = torch.randn(2, 3, dtype=DT)
    results = []
    for rules in ({"0.inner": Epsilon()}, {"0.inner": Epsilon(), "0": Recompute()}):
        model[0].calls = 0
        with zplug.attach_rules(model, rules):
            first, _ = model(x)  # the second output gets no relevance
            results.append(torch.autograd.grad(first, x, relevance_out)[0])
    assert model[0].calls == 2
    assert torch.equal(results[1], results[0])
