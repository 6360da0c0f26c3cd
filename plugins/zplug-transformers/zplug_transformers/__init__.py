"""zplug-transformers: AttnLRP and CP-LRP for Hugging Face language models, token by token.

``explain_tokens(model, input_ids, target, ...)`` (also reached as ``zplug.explain(model, input_ids, ...)``)
returns a :class:`TokenExplanation` with one relevance per token. The family canonizers (``llama``,
``qwen2``, ``qwen3``, ``gemma3``, ``gpt2``, ``bert``) are chosen by ``model.config.model_type`` where a
preset says ``canonizers = "auto"`` (as ``attnlrp`` and ``cp_lrp`` do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zplug_transformers.tokens import TokenExplanation, explain_tokens

__all__ = ("TokenExplanation", "explain_tokens")


def __getattr__(name: str) -> Any:
    # Importing the package (as the plugin's entry point does) must not import torch.
    if name in __all__:
        from zplug_transformers import tokens

        return getattr(tokens, name)
    raise AttributeError(f"module 'zplug_transformers' has no attribute {name!r}")
