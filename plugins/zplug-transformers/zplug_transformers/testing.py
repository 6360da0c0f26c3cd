"""Tiny random models of every supported family and a word-level tokenizer, for tests, examples and benchmarks.

Nothing is downloaded: the models are built from configurations (2 layers, hidden size 64, 4 heads) with
seeded random weights, the tokenizer from a fixed word list.
"""

from __future__ import annotations

import torch
import transformers

FAMILIES = ("llama", "qwen2", "qwen3", "gemma3", "gpt2", "bert")
IMPLEMENTATIONS = ("eager", "sdpa")
VOCABULARY = ("[PAD]", "[UNK]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "home", "is", "it",
              "big", "small", "red", "blue", "and", "or", ".")
#: Enough ids for the models; the tokenizer knows the first len(VOCABULARY).
VOCABULARY_SIZE = 48
#: Additive constants: zeroed for conservation tests.
BIASES = ("bias",)


def config(family: str, implementation: str = "eager") -> tuple[transformers.PretrainedConfig, type]:
    """The family's tiny configuration and its model class (a causal LM; BERT: a 3-class sequence classifier)."""
    common = {"vocab_size": VOCABULARY_SIZE, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "max_position_embeddings": 64, "pad_token_id": 0}
    if family == "llama":
        made, cls = transformers.LlamaConfig(num_key_value_heads=2, **common), transformers.LlamaForCausalLM
    elif family == "qwen2":
        made, cls = transformers.Qwen2Config(num_key_value_heads=2, **common), transformers.Qwen2ForCausalLM
    elif family == "qwen3":
        made = transformers.Qwen3Config(num_key_value_heads=2, head_dim=16, **common)
        cls = transformers.Qwen3ForCausalLM
    elif family == "gemma3":
        made = transformers.Gemma3TextConfig(
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
            layer_types=["sliding_attention", "full_attention"], **common,
        )  # fmt: skip
        cls = transformers.Gemma3ForCausalLM
    elif family == "gpt2":
        made = transformers.GPT2Config(vocab_size=VOCABULARY_SIZE, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                       pad_token_id=0)
        cls = transformers.GPT2LMHeadModel
    elif family == "bert":
        made, cls = transformers.BertConfig(num_labels=3, **common), transformers.BertForSequenceClassification
    else:
        raise ValueError(family)
    made._attn_implementation = implementation
    return made, cls


def tiny(family: str, implementation: str = "eager", dtype: torch.dtype = torch.float64, biases: bool = False,
         seed: int = 0) -> torch.nn.Module:
    """The family's tiny model with seeded random weights; biases zero unless ``biases``."""
    made, cls = config(family, implementation)
    torch.manual_seed(seed)
    model = cls(made).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(BIASES):
                p.copy_(0.1 * torch.randn(p.shape, generator=g) if biases else torch.zeros(p.shape))
            elif p.ndim == 1:  # norm scales (Gemma's are 1 + weight): around 1 either way
                p.uniform_(0.5, 1.5, generator=g) if "gemma" not in family else p.uniform_(-0.5, 0.5, generator=g)
            else:
                fan_in = p.shape[0] if family == "gpt2" and "wte" not in name and "wpe" not in name else p.shape[-1]
                p.normal_(0.0, fan_in**-0.5, generator=g)
    return model.to(dtype)


def token_ids(batch: int = 2, length: int = 7, seed: int = 3) -> torch.Tensor:
    """Random token ids (never the padding id 0)."""
    return torch.randint(1, VOCABULARY_SIZE, (batch, length), generator=torch.Generator().manual_seed(seed))


def word_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over :data:`VOCABULARY` (``[PAD]`` is 0, ``[UNK]`` 1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocabulary = {word: i for i, word in enumerate(VOCABULARY)}
    core = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]")


__all__ = (
    "FAMILIES", "IMPLEMENTATIONS", "VOCABULARY", "VOCABULARY_SIZE", "config", "tiny", "token_ids", "word_tokenizer",
)
