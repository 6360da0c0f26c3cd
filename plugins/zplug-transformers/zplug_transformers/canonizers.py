"""Canonizers for Hugging Face's language-model families: BERT, GPT-2, Llama, Qwen2, Qwen3, Gemma3 (text).

Each family canonizer rewrites, for the duration of an explanation, the forwards of the family's
attention, residual blocks, gated MLPs and RMSNorms so that every operation a rule needs is a module
call (see :mod:`zplug_transformers._rewrites`): attention scores, softmax and context, the rotary
embedding, residual sums, the MLP gate and RMSNorm through ``F.rms_norm``. Modules are matched by
their exact class. Everything else (Linear, LayerNorm, GPT-2's ``Conv1D``, activations, embeddings,
masks, reshapes) keeps its forward. Nothing in ``transformers`` is patched: only instance
attributes of the model's own modules change, and they are restored exactly on exit.

Every rewrite is checked against the module's original forward on its first call
(:class:`zplug.canonizers.ForwardRewrite`); declaring the canonizers imports neither torch nor
transformers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

import attrs

from zplug.canonizers import ForwardRewrite, Rewrite
from zplug.canonizers._patch import patching

if TYPE_CHECKING:
    import torch


@attrs.frozen(kw_only=True)
class HuggingFaceFamily(ForwardRewrite):
    """Base class: rewrite the modules of one family's known classes (``_rewrites.PLANS[name]``)."""

    #: What ``zplug mapping`` shows as the reason for suggesting the canonizer.
    family: ClassVar[str] = ""
    #: The canonizers whose work this one does.
    covers: ClassVar[tuple[str, ...]] = ("residual_sum", "functional_ops", "functional_pooling")

    def rewrites(self, model: torch.nn.Module) -> list[Rewrite]:
        """One rewrite per module of a class the family knows (exact class match)."""
        from zplug_transformers._rewrites import family_rewrites

        return family_rewrites(model, self.name)


@attrs.frozen(kw_only=True)
class Llama(HuggingFaceFamily):
    """Llama: rotary attention, residual sums, gated MLP and RMSNorm as modules."""

    name: ClassVar[str] = "llama"
    summary: ClassVar[str] = "Hugging Face Llama: attention, rotary embedding, residuals, gated MLP, RMSNorm as modules"
    family: ClassVar[str] = "Hugging Face Llama"


@attrs.frozen(kw_only=True)
class Qwen2(HuggingFaceFamily):
    """Qwen2: as Llama (biases on q, k, v)."""

    name: ClassVar[str] = "qwen2"
    summary: ClassVar[str] = "Hugging Face Qwen2: attention, rotary embedding, residuals, gated MLP, RMSNorm as modules"
    family: ClassVar[str] = "Hugging Face Qwen2"


@attrs.frozen(kw_only=True)
class Qwen3(HuggingFaceFamily):
    """Qwen3: as Llama, with RMSNorm on each query and key head."""

    name: ClassVar[str] = "qwen3"
    summary: ClassVar[str] = "Hugging Face Qwen3: attention with q/k norms, rotary, residuals, gated MLP, RMSNorm"
    family: ClassVar[str] = "Hugging Face Qwen3"


@attrs.frozen(kw_only=True)
class Gemma3(HuggingFaceFamily):
    """Gemma3 (text): as Qwen3, with norms after attention and MLP and ``(1 + weight)`` RMSNorm scales."""

    name: ClassVar[str] = "gemma3"
    summary: ClassVar[str] = "Hugging Face Gemma3 text: attention, rotary, residuals, gated MLP, RMSNorm as modules"
    family: ClassVar[str] = "Hugging Face Gemma3 (text)"


@attrs.frozen(kw_only=True)
class GPT2(HuggingFaceFamily):
    """GPT-2: attention and residual sums as modules, each ``Conv1D`` as a ``Linear`` view of its weights.

    The views (:func:`zplug_transformers._rewrites.linear_view`) replace the ``Conv1D`` children for the
    duration: the same arithmetic, but a layer that rules transpose with one matrix product instead of
    running it again under autograd.
    """

    name: ClassVar[str] = "gpt2"
    summary: ClassVar[str] = "Hugging Face GPT-2: attention scores, softmax, context and residuals as modules"
    family: ClassVar[str] = "Hugging Face GPT-2"

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Replace each ``Conv1D`` by its ``Linear`` view, then install the rewrites; undo both on exit."""
        from zplug_transformers._rewrites import conv1d_views

        with patching() as stack:
            for parent, name, view in conv1d_views(model):
                stack.child(parent, name, view)
            with ForwardRewrite.applied(self, model):
                yield model

    def describe(self, model: torch.nn.Module) -> list[str]:
        """One line per rewritten module, and one for the ``Conv1D`` views."""
        from zplug_transformers._rewrites import conv1d_views

        count = len(conv1d_views(model))
        views = [f"{count} Conv1D layer(s) as torch.nn.Linear views of their weights (transposed, shared)"]
        return ForwardRewrite.describe(self, model) + (views if count else [])


@attrs.frozen(kw_only=True)
class Bert(HuggingFaceFamily):
    """BERT: self-attention and the residual sums before each LayerNorm as modules."""

    name: ClassVar[str] = "bert"
    summary: ClassVar[str] = "Hugging Face BERT: attention scores, softmax, context and residuals as modules"
    family: ClassVar[str] = "Hugging Face BERT"


CANONIZERS = (Llama, Qwen2, Qwen3, Gemma3, GPT2, Bert)
#: ``config.model_type`` -> family canonizer.
MODEL_TYPES = {"llama": Llama, "qwen2": Qwen2, "qwen3": Qwen3, "gemma3_text": Gemma3, "gpt2": GPT2, "bert": Bert}

__all__ = ("CANONIZERS", "GPT2", "MODEL_TYPES", "Bert", "Gemma3", "HuggingFaceFamily", "Llama", "Qwen2", "Qwen3")
