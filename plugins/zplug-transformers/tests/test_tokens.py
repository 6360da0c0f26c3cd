"""The token API: targets, positions, padding, texts, half precision, errors, and ``zplug.explain`` on token ids."""

from __future__ import annotations

import re

import pytest
import torch
from zplug_transformers import TokenExplanation, explain_tokens
from zplug_transformers.testing import tiny, token_ids

import zplug
from zplug.errors import SpecError

STABILIZER = 1e-12


def _logits(model, ids, mask=None):
    options = {} if model.config.model_type == "bert" else {"use_cache": False}
    with torch.no_grad():
        return model(ids, attention_mask=mask, **options).logits


def test_default_target_is_the_top_next_token_at_the_last_position():
    model, ids = tiny("llama"), token_ids(2, 6)
    explained = explain_tokens(model, ids)
    last = _logits(model, ids)[:, -1]
    assert explained.position.tolist() == [5, 5]
    assert torch.equal(explained.target, last.argmax(-1))
    torch.testing.assert_close(explained.logit, last.max(-1).values)
    torch.testing.assert_close(explained.output, last)
    assert explained.relevance.shape == ids.shape and explained.embedding_relevance.shape == (2, 6, 64)
    torch.testing.assert_close(explained.relevance, explained.embedding_relevance.sum(-1))


def test_targets_by_id_string_and_position_agree(tokenizer):
    model = tiny("qwen2")
    ids = tokenizer(["the cat sat on the"], return_tensors="pt")["input_ids"]
    by_id = explain_tokens(model, ids, tokenizer.convert_tokens_to_ids("mat"), tokenizer=tokenizer)
    by_string = explain_tokens(model, ids, "mat", tokenizer=tokenizer)
    assert by_id.target.tolist() == by_string.target.tolist() == [tokenizer.convert_tokens_to_ids("mat")]
    assert by_string.target_tokens == ("mat",) and by_string.tokens == (("the", "cat", "sat", "on", "the"),)
    torch.testing.assert_close(by_id.relevance, by_string.relevance, rtol=0, atol=0)
    at_two = explain_tokens(model, ids, "mat", position=2, tokenizer=tokenizer)
    assert at_two.position.tolist() == [2]
    torch.testing.assert_close(at_two.logit, _logits(model, ids)[:, 2, tokenizer.convert_tokens_to_ids("mat")])
    # causal: the tokens after the explained position get nothing
    assert at_two.relevance[0, 3:].abs().max() == 0 and at_two.relevance[0, :3].abs().max() > 0
    assert torch.equal(explain_tokens(model, ids, "mat", position=-3, tokenizer=tokenizer).relevance, at_two.relevance)


def test_one_target_per_sample():
    model, ids = tiny("gpt2"), token_ids(2, 5)
    both = explain_tokens(model, ids, [7, 9])
    single = [explain_tokens(model, ids[i : i + 1], t).relevance[0] for i, t in enumerate((7, 9))]
    assert both.target.tolist() == [7, 9]
    torch.testing.assert_close(both.relevance, torch.stack(single))


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_left_padding_gives_zero_relevance_and_the_unpadded_explanation(family):
    model = tiny(family, "sdpa", torch.float32)
    ids = token_ids(2, 7)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    padded = explain_tokens(model, ids, attention_mask=mask, preset="attnlrp")
    assert padded.position.tolist() == [6, 6]
    assert torch.all(padded.relevance[1, :3] == 0) and torch.all(padded.embedding_relevance[1, :3] == 0)
    alone = explain_tokens(model, ids[1:, 3:], preset="attnlrp")
    assert padded.target[1] == alone.target[0]
    torch.testing.assert_close(padded.relevance[1, 3:], alone.relevance[0], rtol=1e-4, atol=1e-6)


def test_right_padding_explains_the_last_real_token_and_gives_padding_zero(tokenizer):
    model = tiny("qwen3")
    explained = explain_tokens(model, ["the cat sat on the", "a dog"], tokenizer=tokenizer, preset="cp_lrp")
    assert explained.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert explained.position.tolist() == [4, 1]
    assert torch.all(explained.relevance[1, 2:] == 0)
    assert explained.tokens[1] == ("a", "dog", "[PAD]", "[PAD]", "[PAD]")


def test_sequence_classifier_explains_a_class_and_padding_gets_zero():
    model = tiny("bert")
    model.config.id2label = {0: "negative", 1: "neutral", 2: "positive"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    ids = token_ids(2, 6)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    default = explain_tokens(model, ids, attention_mask=mask, preset="cp_lrp", epsilon=STABILIZER,
                             stabilizer=STABILIZER)
    logits = _logits(model, ids, mask)
    assert default.position is None and torch.equal(default.target, logits.argmax(-1))
    by_label = explain_tokens(model, ids, "positive", attention_mask=mask)
    assert by_label.target.tolist() == [2, 2] and by_label.target_tokens == ("positive", "positive")
    torch.testing.assert_close(by_label.logit, logits[:, 2])
    assert torch.all(default.relevance[0, -2:] == 0)
    torch.testing.assert_close(default.relevance.sum(-1), default.logit, rtol=1e-6, atol=0)


def test_zplug_explain_on_token_ids_is_explain_tokens():
    model, ids = tiny("llama"), token_ids(2, 5)
    through_zplug = zplug.explain(model, ids, 4, preset="cp_lrp", epsilon=1e-9, attention_mask=torch.ones_like(ids))
    direct = explain_tokens(model, ids, 4, preset="cp_lrp", epsilon=1e-9)
    assert isinstance(through_zplug, TokenExplanation) and through_zplug.target.tolist() == [4, 4]
    torch.testing.assert_close(through_zplug.relevance, direct.relevance, rtol=0, atol=0)
    assert through_zplug.mapping.params["epsilon"] == 1e-9


def test_the_model_comes_back_as_it_was():
    model, ids = tiny("gemma3"), token_ids(1, 5)
    before = {name: (dict(m.__dict__), tuple(m._modules)) for name, m in model.named_modules()}
    explain_tokens(model, ids, ledger=True)
    after = {name: (dict(m.__dict__), tuple(m._modules)) for name, m in model.named_modules()}
    assert after.keys() == before.keys()
    for name, (attributes, children) in before.items():
        assert after[name][1] == children and after[name][0].keys() == attributes.keys()
        assert all(after[name][0][k] is v for k, v in attributes.items() if k != "_modules"), name


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float16, 1e-2), (torch.bfloat16, 6e-2)])
@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3", "gpt2", "bert"])
def test_half_precision_runs_and_agrees_with_float32(family, dtype, tolerance):
    ids = token_ids(2, 7)
    reference = explain_tokens(tiny(family, "sdpa", torch.float32, biases=True), ids, preset="attnlrp")
    half = explain_tokens(tiny(family, "sdpa", dtype, biases=True), ids, reference.target, preset="attnlrp")
    assert half.embedding_relevance.dtype == dtype and half.relevance.dtype == torch.float32
    assert torch.isfinite(half.relevance).all()
    difference = (half.relevance - reference.relevance).abs().max() / reference.relevance.abs().max()
    assert float(difference) <= tolerance


# -- errors ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama():
    return tiny("llama")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "zebra"}, "target 'zebra' is not a token of the tokenizer's vocabulary"),
        ({"target": "cat dog"}, "target 'cat dog' is 2 tokens (['cat', 'dog']); give one token"),
        ({"target": 48}, "target token id 48 is out of range: the model has 48 tokens"),
        ({"target": 2.5}, "target must be a token id, a token string or None (got 2.5)"),
        ({"target": [1, 2, 3]}, "target must be one value or one per sample (2); got 3"),
        ({"position": 9}, "position [9, 9] is out of range for sequences of 5 tokens"),
        ({"position": -6}, "position [-6, -6] is out of range for sequences of 5 tokens"),
        ({"position": 0, "attention_mask": [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]},
         "position [0, 0] falls on padding in sample(s) [1]; choose a real token"),
        ({"attention_mask": [[1, 1, 1]] * 2}, "attention_mask must hold 0 or 1 for each of the (2, 5) token ids"),
        ({"attention_mask": [[0] * 5, [1] * 5]}, "a sequence has no real token (its attention_mask is all zero)"),
        ({"output_index": 0}, "output_index is not used for language models"),
    ],
)  # fmt: skip
def test_bad_targets_and_positions_are_clear_errors(llama, tokenizer, kwargs, message):
    ids = token_ids(2, 5)
    with pytest.raises(SpecError, match=re.escape(message)):
        explain_tokens(llama, ids, tokenizer=tokenizer, **kwargs)


def test_inputs_that_need_a_tokenizer_are_refused_without_one(llama):
    with pytest.raises(SpecError, match=r"^explain_tokens: texts need tokenizer=; or pass token ids$"):
        explain_tokens(llama, "the cat")
    with pytest.raises(SpecError, match=r"target 'cat' is a token string: pass tokenizer= \(or give the token id\)"):
        explain_tokens(llama, token_ids(1, 3), "cat")
    with pytest.raises(SpecError, match=r"input_ids must be integer token ids shaped \(batch, tokens\)"):
        explain_tokens(llama, torch.ones(1, 3))


def test_classifier_errors():
    model = tiny("bert")
    with pytest.raises(SpecError, match=r"target 'great' is not a label of the model \(config.label2id: "):
        explain_tokens(model, token_ids(1, 4), "great")
    with pytest.raises(SpecError, match="position= is for language models; BertForSequenceClassification returns one"):
        explain_tokens(model, token_ids(1, 4), position=1)
    with pytest.raises(SpecError, match="target class 3 is out of range: the model has 3 classes"):
        explain_tokens(model, token_ids(1, 4), 3)


# -- cost: one forward pass, the head at the explained positions, a mapping resolved once ---------------
def test_one_forward_pass_with_the_head_at_the_explained_positions_only():
    model, ids = tiny("qwen2"), token_ids(2, 6)
    heads = []
    model.lm_head.register_forward_hook(lambda m, args, out: heads.append(tuple(args[0].shape)))
    explained = explain_tokens(model, ids, position=[2, 4], preset="attnlrp")
    assert heads == [(2, 2, 64)]  # one forward pass; the head at positions 2 and 4 only
    full = _logits(model, ids)
    torch.testing.assert_close(explained.output, full[[0, 1], [2, 4]])
    assert torch.equal(explained.target, full[[0, 1], [2, 4]].argmax(-1))
    assert explained.relevance[0, 3:].abs().max() == 0 and explained.relevance[1, 5:].abs().max() == 0


def test_the_mapping_is_resolved_once_per_model_preset_and_parameters():
    model, ids = tiny("gpt2"), token_ids(1, 5)
    first = explain_tokens(model, ids, preset="attnlrp")
    second = explain_tokens(model, ids, preset="attnlrp")
    assert second.mapping is first.mapping and torch.equal(second.relevance, first.relevance)
    assert explain_tokens(model, ids, preset="attnlrp", epsilon=1e-3).mapping is not first.mapping
    assert explain_tokens(model, ids, preset="cp_lrp").mapping is not first.mapping
    model.config._attn_implementation = "sdpa"
    sdpa = explain_tokens(model, ids, preset="attnlrp")
    assert sdpa.mapping is not first.mapping
    # Eager attention returns its weights, so fused_attention computes it with the inner rules (stabilisers 1e-6);
    # under sdpa the fused kernel computes it without inner stabiliser: equal up to those stabilisers' effect.
    scale = float(first.relevance.abs().max())
    torch.testing.assert_close(sdpa.relevance, first.relevance, rtol=1e-4, atol=1e-4 * scale)
    assert explain_tokens(tiny("gpt2"), ids, preset="attnlrp").mapping is not first.mapping


# -- gradient form ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_gradient_form_gives_the_relevance_of_relevance_form(family, preset):
    """Rotary models add no constant to the embeddings: both forms give the same relevance."""
    model, ids = tiny(family, "sdpa"), token_ids(2, 6)
    expected = explain_tokens(model, ids, preset=preset, epsilon=0, stabilizer=0)
    found = explain_tokens(model, ids, preset=preset, epsilon=0, stabilizer=0, form="gradient")
    scale = float(expected.relevance.abs().max())
    torch.testing.assert_close(found.relevance, expected.relevance, rtol=1e-7, atol=1e-7 * scale)


def test_gradient_form_says_that_position_embeddings_keep_a_share():
    model, ids = tiny("gpt2", "sdpa"), token_ids(2, 6)
    with pytest.warns(zplug.CoverageWarning, match=r"^transformer: add adds a constant: in gradient form"):
        explain_tokens(model, ids, preset="cp_lrp", epsilon=0, stabilizer=0, form="gradient")
