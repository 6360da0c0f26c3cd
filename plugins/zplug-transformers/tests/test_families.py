"""Every family: the canonizer chosen by model_type, zero uncovered operations, CP-LRP conserves, the model restored.

Tiny random models (2 layers, hidden 64) in float64 without biases: CP-LRP then conserves relevance
(the relevance sums to the explained logit) up to the float32 that Llama-like models compute their
softmax and RMSNorm in. Both of Hugging Face's attention implementations (eager, sdpa) are checked.
"""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
import transformers
from zplug_transformers import explain_tokens
from zplug_transformers.canonizers import MODEL_TYPES
from zplug_transformers.layers import Attention
from zplug_transformers.testing import FAMILIES, IMPLEMENTATIONS, tiny, token_ids

import zplug
from zplug.canonizers import CanonizerError, auto_canonizers

STABILIZER = 1e-12
CASES = [(f, i) for f in FAMILIES for i in IMPLEMENTATIONS]
MODELING = [f"transformers.models.{m}.modeling_{m}" for m in ("llama", "qwen2", "qwen3", "gemma3", "gpt2", "bert")]


def _snapshot(model: torch.nn.Module):
    """Everything of the model a canonizer or rule could change, and transformers' module functions."""
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layout = [
        (name, dict(m.__dict__.get("_parameters", {})), tuple(m._modules), tuple(sorted(k for k in m.__dict__)),
         m.__dict__.get("forward"), dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
        for name, m in model.named_modules()
    ]  # fmt: skip
    modules = {path: dict(vars(importlib.import_module(path))) for path in MODELING}
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    functions = dict(ALL_ATTENTION_FUNCTIONS.items())
    return tensors, layout, modules, functions


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_picks_the_family_canonizer_by_model_type(registry, family):
    model = tiny(family)
    chosen = auto_canonizers(model, registry)
    assert [(name, plugin) for name, _, plugin in chosen] == [(MODEL_TYPES[model.config.model_type].name,
                                                               "transformers")]


@pytest.mark.parametrize(("family", "implementation"), CASES)
def test_cp_lrp_conserves_and_covers_everything_and_restores_the_model(family, implementation):
    model = tiny(family, implementation)
    ids = token_ids(2, 7)
    before = _snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no CoverageWarning, no note
        explained = explain_tokens(model, ids, preset="cp_lrp", epsilon=STABILIZER, stabilizer=STABILIZER,
                                   strict=True, ledger=True)
    coverage = explained.mapping.coverage
    assert not explained.mapping.unmapped and coverage.uncovered == () and coverage.idle == ()
    assert not explained.mapping.notes
    assert explained.relevance.shape == ids.shape and explained.relevance.dtype == torch.float64
    totals = explained.relevance.sum(-1)
    assert torch.allclose(totals, explained.logit, rtol=1e-6, atol=0), (totals, explained.logit)
    ledger = explained.ledger
    assert abs(ledger.leaked) <= 1e-6 * abs(ledger.output)
    after = _snapshot(model)
    assert after[1] == before[1] and after[2] == before[2] and after[3] == before[3]
    assert all(torch.equal(after[0][k], v) for k, v in before[0].items())


@pytest.mark.parametrize(("family", "implementation"), CASES)
def test_the_canonized_model_computes_what_the_model_computes(family, implementation):
    model = tiny(family, implementation, biases=True)
    ids, mask = token_ids(2, 7), torch.ones(2, 7, dtype=torch.long)
    mask[0, :3] = 0
    options = {} if family == "bert" else {"use_cache": False}
    expected = model(ids, attention_mask=mask, **options).logits
    mapping = zplug.resolve(model, "attnlrp")
    with mapping.applied(model):
        rewritten = [name for name, m in model.named_modules() if "forward" in m.__dict__]
        got = model(ids, attention_mask=mask, **options).logits
    assert rewritten  # the family canonizer did rewrite modules ...
    # ... without changing the function. (In float64, Hugging Face's eager float32 softmax turns the masked rows
    # of left padding into NaN, which then spreads over the padded sample: the rewrite reproduces that too.)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9, equal_nan=True)
    assert torch.isfinite(got[1]).all()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_key_value_cache_is_refused(family):
    model = tiny(family)
    with zplug.resolve(model, "attnlrp").applied(model), pytest.raises(
        CanonizerError, match="cannot update a key/value cache: call the model with use_cache=False"
    ):
        model(token_ids(1, 4), use_cache=True)


def test_an_unsupported_attention_implementation_is_refused():
    model = tiny("llama")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(CanonizerError, match="attn_implementation='flash_attention_2'; the rewrites reproduce"):
        zplug.resolve(model, "attnlrp")


def test_gemma3_attention_softcapping_is_refused():
    model = tiny("gemma3")
    for layer in model.model.layers:
        layer.self_attn.attn_logit_softcapping = 50.0
    with pytest.raises(CanonizerError, match=r"caps its attention logits with tanh \(attn_logit_softcapping\)"):
        zplug.resolve(model, "attnlrp")


def test_mapping_shows_the_rewrites_and_the_rules(registry):
    model = tiny("qwen3")
    text = str(zplug.resolve(model, "attnlrp"))
    assert "qwen3: auto: the model is a Hugging Face Qwen3 (config.model_type 'qwen3')" in text
    assert ("model.layers.0.self_attn (Qwen3Attention): rotary_query, rotary_key, attention (scores, softmax, "
            "context)") in text
    for line in ("model.layers.0.self_attn.rotary_query", "model.layers.0.self_attn.q_norm", "model.layers.0.mlp.gate",
                 "model.layers.0.residual_attention", "model.layers.0.self_attn.attention.softmax",
                 "model.layers.0.self_attn.attention "):
        assert line in text
    assert "never called" not in text and "UNMAPPED" not in text


def test_gpt2_conv1d_is_a_linear_layer():
    model = tiny("gpt2")
    mapping = zplug.resolve(model, "attnlrp")
    assert isinstance(model.transformer.h[0].attn.c_attn, transformers.pytorch_utils.Conv1D)
    assert mapping["transformer.h.0.attn.c_attn"].rule_name == "epsilon"
    assert mapping["transformer.h.0.mlp.c_fc"].rule_name == "epsilon"


def test_gpt2_conv1d_views_compute_what_conv1d_computes_and_change_no_relevance(monkeypatch):
    from zplug_transformers import _rewrites

    model, ids = tiny("gpt2", biases=True), token_ids(2, 6)
    conv = model.transformer.h[0].attn.c_attn
    view = _rewrites.linear_view(conv)
    x = torch.randn(2, 6, 64, dtype=torch.float64)
    assert torch.equal(view(x), conv(x))
    assert view.weight.data_ptr() == conv.weight.data_ptr() and view.bias.data_ptr() == conv.bias.data_ptr()
    seen = []
    hook = model.transformer.h[0].attn.register_forward_pre_hook(lambda m, args: seen.append(type(m.c_attn)))
    with_views = explain_tokens(model, ids, preset="attnlrp")
    hook.remove()
    assert set(seen) == {torch.nn.Linear} and model.transformer.h[0].attn.c_attn is conv
    monkeypatch.setattr(_rewrites, "conv1d_views", lambda model: [])  # each Conv1D transposed through autograd
    # canonizers= given: another mapping, resolved (and checked) for the Conv1D layers
    without = explain_tokens(model, ids, with_views.target, preset="attnlrp", canonizers=["gpt2"])
    again = explain_tokens(model, ids, with_views.target, preset="attnlrp", canonizers=["gpt2"])
    torch.testing.assert_close(with_views.relevance, without.relevance, rtol=1e-6, atol=0)
    torch.testing.assert_close(without.relevance, again.relevance, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_attention_keeps_no_scores_for_the_backward_pass(family, implementation):
    """``fused_attention`` on each layer's attention: no (batch, heads, length, length) tensor is kept per layer.

    Eager attention returns its weights, which the fused kernel does not compute: there the rule recomputes the
    inner rules instead, which keeps nothing either.
    """
    model = tiny(family, implementation)
    ids = token_ids(batch=1, length=9)
    mapping = zplug.resolve(model, "attnlrp")
    cores = [m for m in mapping if m.module_class is Attention]
    assert len(cores) == 2 and {m.rule_name for m in cores} == {"fused_attention"}
    shapes = []

    def pack(t):
        if torch._C._current_graph_task_id() == -1:  # kept by the forward pass (not the transient recomputation)
            shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        explanation = explain_tokens(model, ids, preset="attnlrp")
    assert explanation.relevance.abs().sum() > 0
    assert (1, 4, 9, 9) not in shapes
