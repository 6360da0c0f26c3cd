"""Gradient form: the backward pass carries relevance divided by the activation, with the same input relevance."""

from __future__ import annotations

import pytest
import torch

import zplug
from zplug.engine.gradient_form import model_boundaries
from zplug.errors import RelevanceError, SpecError
from zplug.layers import Mul, ScaledDotProductAttention, Sum
from zplug.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    FrozenScale,
    Gamma,
    Norm,
    Pass,
    Product,
    Recompute,
    Softmax,
    ZPlus,
)
from zplug.rules.attention import FusedAttention

DT = torch.float64
HEADS, LENGTH, SIZE = 2, 7, 3


def relevance(model, x, rules, form, relevance_out=None):
    """The input relevance under ``rules`` (module name -> rule) in ``form``, for output relevance ``out``."""
    x = x.clone().requires_grad_()
    with zplug.attach_rules(model, rules, form=form):
        if form == "gradient":
            with model_boundaries(model):
                out = model(x)
        else:
            out = model(x)
        return torch.autograd.grad(out, x, out.detach() if relevance_out is None else relevance_out)[0]


def assert_same_in_both_forms(model, x, rules, rtol=1e-12):
    expected = relevance(model, x, rules, "relevance")
    found = relevance(model, x, rules, "gradient")
    assert float(expected.abs().sum()) > 0
    torch.testing.assert_close(found, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


class Residual(torch.nn.Module):
    """A pre-norm residual block with a gated MLP: LayerNorm, Linear, GELU gate (Mul), Linear, Sum."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.up, self.gate_proj = torch.nn.Linear(width, 8), torch.nn.Linear(width, 8)
        self.down = torch.nn.Linear(8, width)
        self.act, self.gate, self.sum = torch.nn.GELU(), Mul(value=1), Sum()
        self.relu, self.head = torch.nn.ReLU(), torch.nn.Linear(width, 3)

    def forward(self, x):
        h = self.down(self.gate(self.act(self.gate_proj(self.norm(x))), self.up(self.norm(x))))
        return self.head(self.relu(self.sum(x, h)))


def residual_rules(epsilon: float, to: str = "all", zero: tuple[str, ...] = ()) -> dict:
    return {
        "norm": FrozenScale(epsilon=epsilon, zero_params=zero),
        "up": Epsilon(epsilon=epsilon, zero_params=zero), "gate_proj": Epsilon(epsilon=epsilon),
        "down": Epsilon(epsilon=epsilon), "head": Epsilon(epsilon=epsilon), "act": Pass(), "relu": Pass(),
        "gate": Product(to=to, epsilon=epsilon), "sum": Norm(stabilizer=epsilon),
    }  # fmt: skip


@pytest.mark.parametrize("epsilon", [0.0, 1e-6, 0.25])
@pytest.mark.parametrize("to", ["all", "value"])
def test_every_rule_of_a_residual_block_gives_the_same_relevance_in_both_forms(epsilon, to):
    torch.manual_seed(0)
    model = Residual().to(DT)
    assert_same_in_both_forms(model, torch.randn(4, 6, dtype=DT), residual_rules(epsilon, to))


@pytest.mark.parametrize(
    "rule", [ZPlus(), AlphaBeta(alpha=2.0, beta=1.0), Gamma(gamma=0.25), Gamma(gamma=0.25, zero_params=["bias"])]
)
def test_rules_of_positive_and_negative_contributions_in_both_forms(rule):
    torch.manual_seed(12)
    model = Residual().to(DT)
    rules = residual_rules(1e-6)
    for name in ("up", "gate_proj", "down"):
        rules[name] = rule
    assert_same_in_both_forms(model, torch.randn(4, 6, dtype=DT), rules)


def test_zeroed_parameters_give_the_same_relevance_in_both_forms():
    torch.manual_seed(1)
    model = Residual().to(DT)
    assert_same_in_both_forms(model, torch.randn(4, 6, dtype=DT), residual_rules(1e-3, zero=("bias",)))


def test_group_norm_and_a_custom_output_relevance_in_both_forms():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Tanh(),
                                torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(36, 3)).to(DT)
    rules = {"0": Epsilon(epsilon=0.1), "1": FrozenScale(epsilon=0.1), "2": Pass(), "3": Norm(stabilizer=0.1),
             "5": Epsilon(epsilon=0.1)}
    x = torch.randn(2, 2, 8, 8, dtype=DT)
    out_relevance = torch.randn(2, 3, dtype=DT)
    expected = relevance(model, x, rules, "relevance", out_relevance)
    torch.testing.assert_close(relevance(model, x, rules, "gradient", out_relevance), expected, rtol=1e-12, atol=1e-14)


class Block(torch.nn.Module):
    """Projections, attention as one module (scores, bias, softmax, context) and an output projection."""

    def __init__(self, causal: bool) -> None:
        super().__init__()
        width = HEADS * SIZE
        self.q, self.k, self.v, self.out = (torch.nn.Linear(width, width) for _ in range(4))
        self.attention = ScaledDotProductAttention()
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def heads(t):
            return t.reshape(t.shape[0], LENGTH, HEADS, SIZE).transpose(1, 2)

        bias = torch.linspace(-1, 1, LENGTH * LENGTH, dtype=x.dtype).reshape(LENGTH, LENGTH)
        context = self.attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), bias, is_causal=self.causal)
        return self.out(context.transpose(1, 2).reshape(x.shape))


def attention_rules(to: str, inner_epsilon: float, whole=None) -> dict:
    rules = {name: Epsilon(epsilon=1e-9) for name in ("q", "k", "v", "out")}
    rules.update({
        "attention.scores": Product(to=to, epsilon=inner_epsilon), "attention.bias": Norm(stabilizer=inner_epsilon),
        "attention.softmax": Softmax(), "attention.context": Product(to=to, epsilon=inner_epsilon),
    })  # fmt: skip
    if whole is not None:
        rules["attention"] = whole
    return rules


@pytest.mark.parametrize("whole", [None, Recompute(), FusedAttention(epsilon=1e-9), FusedAttention(to="value")])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_gives_the_same_relevance_in_both_forms(whole, causal):
    torch.manual_seed(3)
    model = Block(causal).to(DT)
    to = whole.to if isinstance(whole, FusedAttention) else "all"
    assert_same_in_both_forms(model, torch.randn(2, LENGTH, HEADS * SIZE, dtype=DT), attention_rules(to, 1e-9, whole))


@pytest.mark.parametrize("to", ["all", "value"])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_is_the_inner_rules_without_inner_stabiliser(to, causal):
    torch.manual_seed(4)
    model = Block(causal).to(DT)
    x = torch.randn(2, LENGTH, HEADS * SIZE, dtype=DT)
    inner = relevance(model, x, attention_rules(to, 0.0), "relevance")
    fused = relevance(model, x, attention_rules(to, 0.0, FusedAttention(epsilon=0.0, to=to)), "relevance")
    torch.testing.assert_close(fused, inner, rtol=1e-10, atol=1e-12 * float(inner.abs().max()))


def test_fused_attention_keeps_no_length_by_length_tensor_and_runs_the_fused_kernel(monkeypatch):
    torch.manual_seed(5)
    model = Block(causal=True).to(DT)
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    shapes = []
    x = torch.randn(2, LENGTH, HEADS * SIZE, dtype=DT, requires_grad=True)
    rules = attention_rules("all", 1e-9, FusedAttention())
    with zplug.attach_rules(model, rules), torch.autograd.graph.saved_tensors_hooks(
        lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t
    ):
        out = model(x)
    assert (2, HEADS, LENGTH, LENGTH) not in shapes
    assert len(calls) == 1  # the forward pass
    with zplug.attach_rules(model, rules):
        torch.autograd.grad(model(x), x, torch.ones_like(out))
    assert len(calls) == 2  # one more forward pass; the backward pass differentiates the kernel's own graph


def test_the_ledger_sees_the_inner_rules_of_fused_attention():
    torch.manual_seed(6)
    model = Block(causal=False).to(DT)
    x = torch.randn(2, LENGTH, HEADS * SIZE, dtype=DT)
    explained = zplug.explain(model, x, lambda out: out, mapping=attention_rules("all", 1e-9, FusedAttention()),
                              ledger=True)
    names = [entry.name for entry in explained.ledger.entries]
    assert "attention.softmax" in names and "attention" not in names


def test_in_gradient_form_unstabilised_rules_make_no_autograd_node():
    torch.manual_seed(7)
    model = Residual().to(DT)
    with zplug.attach_rules(model, residual_rules(0.0), form="gradient") as bindings:
        assert sorted(bindings) == ["act", "gate", "norm"]  # epsilon and norm without stabiliser, ReLU: plain
    with zplug.attach_rules(model, residual_rules(1e-6), form="gradient") as bindings:
        assert "up" in bindings and "sum" in bindings and "relu" not in bindings


def _kept_elements(output: torch.Tensor, model: torch.nn.Module) -> int:
    """The elements of the activations the autograd graph behind ``output`` keeps (saved tensors, kept outputs)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages, seen, pending = {}, set(), [output.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        tensors = []
        if zplug.engine.binding_of(node) is not None:
            tensors += list(node.saved_tensors) + [t for t, _ in node.outputs if t is not None]
        tensors += [getattr(node, a) for a in dir(node) if a.startswith("_saved_")]
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in parameters:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        pending.extend(child for child, _ in node.next_functions)
    return sum(storages.values())


def test_gradient_form_keeps_less_for_the_backward_pass():
    torch.manual_seed(8)
    model = Residual().to(DT)

    def kept(form):
        x = torch.randn(4, 6, dtype=DT, requires_grad=True)
        with zplug.attach_rules(model, residual_rules(0.0), form=form):
            return _kept_elements(model(x), model)

    # relevance form keeps (at least) the outputs of down and the head besides: gradient form divides by neither
    assert kept("gradient") + 4 * (6 + 3) <= kept("relevance")


def test_a_rule_without_gradient_form_is_refused_by_name():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2)).to(DT)
    with pytest.raises(RelevanceError) as error, zplug.attach_rules(model, {"0": Flat()}, form="gradient"):
        pass
    assert str(error.value) == (
        "gradient form: rule 'flat' on layer '0' (Linear) has no gradient form; apply the mapping in relevance form"
    )
    assert "forward" not in model[0].__dict__


def test_observers_and_unknown_forms_are_refused():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2)).to(DT)
    with pytest.raises(RelevanceError, match="observers \\(the ledger\\) see relevance"):
        with zplug.attach_rules(model, {"0": Epsilon()}, form="gradient", observers=(lambda *a: None,)):
            pass
    with pytest.raises(SpecError, match="form must be 'relevance' or 'gradient' \\(got 'grad'\\)"):
        with zplug.attach_rules(model, {"0": Epsilon()}, form="grad"):
            pass


def test_relevance_on_an_output_of_exactly_zero_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2, bias=False)).to(DT)
    x = torch.zeros(1, 3, dtype=DT)
    with pytest.raises(RelevanceError, match="relevance was given to a model output that is exactly 0"):
        relevance(model, x, {"0": Epsilon()}, "gradient", torch.ones(1, 2, dtype=DT))
    # no relevance there: fine
    assert torch.equal(relevance(model, x, {"0": Epsilon()}, "gradient", torch.zeros(1, 2, dtype=DT)), x)


def test_a_mapping_in_gradient_form_matches_relevance_form_and_restores_the_model():
    from torchvision.models import vision_transformer

    torch.manual_seed(9)
    model = vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32).to(DT).eval()
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.5)
    x = torch.randn(2, 3, 32, 32, dtype=DT)
    for preset in ("attnlrp", "cp_lrp"):
        for epsilon in (0.0, 1e-6):
            mapping = zplug.resolve(model, preset, epsilon=epsilon, stabilizer=epsilon)
            results = {}
            for form in ("relevance", "gradient"):
                inp = x.clone().requires_grad_()
                with mapping.applied(model, form=form) as m:
                    out = m(inp)
                    target = torch.zeros_like(out)
                    target[:, 1] = out[:, 1].detach()
                    results[form] = torch.autograd.grad(out, inp, target)[0]
            torch.testing.assert_close(results["gradient"], results["relevance"], rtol=1e-11,
                                       atol=1e-11 * float(results["relevance"].abs().max()))
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_a_model_that_returns_a_dict_is_refused_in_gradient_form():
    class Dict(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x):
            return {"logits": self.linear(x)}

    model = Dict().to(DT)
    with pytest.raises(RelevanceError, match="returned a dict; gradient form needs a tensor"):
        with zplug.attach_rules(model, {"linear": Epsilon(epsilon=0.1)}, form="gradient"), model_boundaries(model):
            model(torch.randn(1, 3, dtype=DT, requires_grad=True))
    assert not model._forward_hooks and not model._forward_pre_hooks  # removed, also after the error
    assert "forward" not in model.linear.__dict__


def test_explain_in_gradient_form_gives_the_relevance_of_relevance_form():
    torch.manual_seed(10)
    model = Residual().to(DT)
    x = torch.randn(3, 6, dtype=DT)
    expected = zplug.explain(model, x, 1, mapping=residual_rules(1e-6))
    found = zplug.explain(model, x, 1, mapping=residual_rules(1e-6), form="gradient")
    torch.testing.assert_close(found.relevance, expected.relevance, rtol=1e-12, atol=1e-14)
    with pytest.raises(RelevanceError, match="observers \\(the ledger\\) see relevance"):
        zplug.explain(model, x, 1, mapping=residual_rules(1e-6), form="gradient", ledger=True)


EPSILON_ONLY = """
schema = 1
summary = "epsilon everywhere (test)"
extends = "epsilon_plus"

[[layer_map]]
types = ["convolution"]
rule = { name = "epsilon", epsilon = { param = "epsilon" } }
"""


# A zero stabiliser divides 0 by 0 in relevance form where a pooled ReLU output is 0 (NaN, as in Zennit); gradient
# form has no division there. Relevance form with 1e-30 is its limit.
@pytest.mark.parametrize(("epsilon", "epsilon_in_gradient_form"), [(1e-30, 0.0), (0.01, 0.01)])
def test_a_resnet_with_merged_batchnorm_and_residual_sums_in_both_forms(tmp_path, epsilon, epsilon_in_gradient_form):
    from torchvision.models import resnet18

    torch.manual_seed(11)
    model = resnet18(num_classes=5).to(DT).eval()
    preset = tmp_path / "epsilon_only.toml"
    preset.write_text(EPSILON_ONLY)
    x = torch.randn(2, 3, 32, 32, dtype=DT)
    results = {}
    for form, value in (("relevance", epsilon), ("gradient", epsilon_in_gradient_form)):
        mapping = zplug.resolve(model, str(preset), epsilon=value, stabilizer=value)
        assert [c.name for c in mapping.canonizers] == ["resnet"]  # merges BatchNorm, routes the residual sums
        results[form] = zplug.explain(model, x, 2, mapping=mapping, form=form).relevance
    torch.testing.assert_close(results["gradient"], results["relevance"], rtol=1e-10,
                               atol=1e-10 * float(results["relevance"].abs().max()))


class Shifted(torch.nn.Module):
    """``Linear(x + c)`` with a constant ``c``: an addition without a rule (the coverage analysis calls it linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("offset", torch.linspace(0.5, 2.0, 4, dtype=DT))
        self.linear = torch.nn.Linear(4, 2, bias=False).to(DT)

    def forward(self, x):
        return self.linear(x + self.offset)


def test_an_added_constant_keeps_its_share_in_gradient_form_and_a_warning_says_so(tmp_path):
    torch.manual_seed(13)
    model = Shifted()
    x = torch.randn(3, 4, dtype=DT)
    preset = tmp_path / "lrp0.toml"
    preset.write_text('schema = 1\nsummary = "test"\n[[name_map]]\nnames = ["linear"]\n'
                      'rule = { name = "epsilon", epsilon = 0.0 }\n')
    mapping = zplug.resolve(model, str(preset))
    with pytest.warns(zplug.CoverageWarning) as caught:
        found = zplug.explain(model, x, 1, mapping=mapping, form="gradient").relevance
    assert [str(w.message) for w in caught] == [
        "(model): add adds a constant: in gradient form the constant keeps its share of the relevance, as a bias "
        "does (relevance form gives all of it to the tensor)"
    ]
    expected = zplug.explain(model, x, 1, mapping=mapping).relevance  # all of it to x
    torch.testing.assert_close(found, expected * x / (x + model.offset), rtol=1e-12, atol=1e-14)
