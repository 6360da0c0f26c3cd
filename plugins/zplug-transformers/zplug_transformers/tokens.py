"""Relevance per token for Hugging Face language models: :func:`explain_tokens` and :class:`TokenExplanation`.

The explained function starts at the token embeddings: the output of ``model.get_input_embeddings()``
(the lookup table, scaled where the family scales it) is the input that :func:`zplug.explain` explains,
and the model is called with ``inputs_embeds=`` for the duration. Additive constants that the model puts
on top (GPT-2's and BERT's position and token-type embeddings) pass their relevance to the token at their
position, so a token's relevance is that of everything that enters the first layer at its position.
Summing over the hidden dimension gives one number per token.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any

import attrs
import torch

import zplug
from zplug.canonizers._patch import patching
from zplug.errors import SpecError
from zplug.explanation import Explanation
from zplug.preset.binding import bind_preset
from zplug_transformers._mappings import resolved


@attrs.frozen(kw_only=True)
class TokenExplanation(Explanation):
    """What :func:`explain_tokens` (and :func:`zplug.explain` on token ids) returns.

    Attributes
    ----------
    relevance : torch.Tensor
        ``(batch, tokens)``: each token's relevance, the relevance of its embedding summed over the
        hidden dimension (in float32 for float16 and bfloat16 models). Padding tokens get exactly zero.
    embedding_relevance : torch.Tensor
        ``(batch, tokens, hidden)``: the relevance of each embedding entry (the model's dtype).
    output : torch.Tensor
        The logits that the target is chosen from: ``(batch, vocabulary)`` at the explained position
        of a language model, ``(batch, classes)`` for a sequence classifier.
    target : torch.Tensor
        ``(batch,)``: the explained token id (language models) or class (classifiers).
    logit : torch.Tensor
        ``(batch,)``: the explained logit. The backward pass starts from it, so the relevance of a
        conservative preset (``cp_lrp`` without biases) sums to it.
    position : torch.Tensor or None
        ``(batch,)``: the position whose next-token logits are explained (``None`` for classifiers).
    token_ids : torch.Tensor
        ``(batch, tokens)``: the input ids.
    attention_mask : torch.Tensor
        ``(batch, tokens)``: 1 for real tokens, 0 for padding.
    tokens : tuple of tuple of str, or None
        The tokens as strings, when a tokenizer was given.
    target_tokens : tuple of str, or None
        The explained tokens (or class labels) as strings, when known.
    """

    embedding_relevance: torch.Tensor
    target: torch.Tensor
    logit: torch.Tensor
    position: torch.Tensor | None = None
    token_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: tuple[tuple[str, ...], ...] | None = None
    target_tokens: tuple[str, ...] | None = None


def explain_tokens(
    model: torch.nn.Module,
    input_ids: Any,
    target: Any = None,
    *,
    position: int | Sequence[int] | None = None,
    attention_mask: torch.Tensor | None = None,
    tokenizer: Any = None,
    preset: Any = "attnlrp",
    attributor: Any = "gradient",
    mapping: Any = None,
    output_index: int | None = None,
    ledger: bool = False,
    progress: Any = None,
    strict: bool = False,
    canonizers: Any = None,
    form: str = "relevance",
    **params: Any,
) -> TokenExplanation:
    """Explain one logit of a Hugging Face model per sample, token by token.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal or masked language model (logits per position) or a sequence classifier, in
        ``eval()`` mode. Restored exactly on return.
    input_ids : tensor, list, str, list of str or mapping
        Token ids ``(batch, tokens)`` or ``(tokens,)``; a text or texts (with ``tokenizer``, padded);
        or a tokenizer's output (``input_ids`` and ``attention_mask``).
    target : None, int, str or a sequence of them (one per sample)
        Language models: the next token to explain at ``position``, as an id or a token string (with
        ``tokenizer``); ``None`` for the highest logit there. Classifiers: the class, as an index or a
        label of ``model.config.label2id``; ``None`` for the predicted class.
    position : None, int or sequence of int
        Language models only: the position whose logits are explained. ``None``: the last real (not
        padding) token. A non-negative index counts from the start of the sequence as given, a negative
        one back from the last real token (``-1`` is the last).
    attention_mask : tensor or None
        1 for tokens, 0 for padding (``None``: all ones, or the tokenizer's mask).
    tokenizer : transformers tokenizer or None
        Needed for texts and token-string targets; fills :attr:`TokenExplanation.tokens`.
    preset, attributor, mapping, ledger, progress, strict, canonizers, form, **params
        As in :func:`zplug.explain`: the preset (``"attnlrp"`` or ``"cp_lrp"``; ``None`` for
        gradient times input) and its parameters (``epsilon``, ``stabilizer``, ...).
    output_index : None
        Not used (the logits are chosen by ``target`` and ``position``); anything else is an error.

    Returns
    -------
    TokenExplanation

    Raises
    ------
    SpecError
        For targets, positions, masks or inputs that do not fit the model (an unknown token string, a
        position out of range or on padding, a text without tokenizer).
    """
    if output_index is not None:
        raise SpecError("explain_tokens: output_index is not used for language models; choose with target/position")
    ids, mask = _token_ids(input_ids, attention_mask, tokenizer)
    device = model.get_input_embeddings().weight.device
    ids, mask = ids.to(device), mask.to(device)
    call = _Call(model, ids, mask, position)
    with torch.no_grad():
        embeddings = model.get_input_embeddings()(ids)
    if not embeddings.is_floating_point():
        raise SpecError(f"explain_tokens: the input embeddings of {type(model).__name__} are not floating-point")
    chooser = _Chooser(target, tokenizer, model, call)
    bound = bind_preset(preset, params, attributor=attributor)
    if not _single_pass(attributor):
        # Perturbing attributors see other outputs than the model's: choose the target on the clean one first.
        with torch.no_grad():
            chooser(call.selected(embeddings))
    if bound.preset is not None:
        if mapping is not None:
            raise SpecError("give either preset= or mapping=, not both")
        # Resolved before the model's forward takes embeddings, so that canonizers = "auto" sees the model as it is.
        mapping = resolved(model, preset, bound, strict, canonizers)
    elif canonizers is not None:
        raise SpecError("canonizers= goes with preset= (a mapping= brings its own canonizers)")
    with patching() as stack:
        stack.attribute(model, "forward", call.selected)
        result = zplug.explain(
            model, embeddings, chooser, attributor=attributor, mapping=mapping, ledger=ledger, progress=progress,
            form=form,
            **bound.attributor_params,
        )  # fmt: skip
    relevance = result.relevance
    summed = relevance.float() if relevance.dtype in (torch.float16, torch.bfloat16) else relevance
    targets = chooser.targets
    return TokenExplanation(
        output=result.output, relevance=summed.sum(-1), embedding_relevance=relevance, mapping=result.mapping,
        ledger=result.ledger, attributor=result.attributor, target=targets,
        logit=result.output.gather(1, targets[:, None])[:, 0], position=call.positions, token_ids=ids,
        attention_mask=mask, tokens=_strings(ids, tokenizer), target_tokens=_target_strings(
            targets, tokenizer, model, call.positions is not None),
    )  # fmt: skip


def _single_pass(attributor: Any) -> bool:
    """Whether the attributor explains the output of the unperturbed input (one forward pass: ``gradient``)."""
    name = attributor if isinstance(attributor, str) else getattr(attributor, "name", None)
    return name == "gradient"


class _Call:
    """Calls the model on embeddings with the mask (and, for causal models, position ids that skip padding).

    Language models whose forward takes ``logits_to_keep`` (Hugging Face's causal LMs) compute the head at the
    explained positions only: the logits elsewhere receive no relevance, and the head over every position
    would cost a large share of the forward pass (GPT-2's vocabulary is 50257 wide).
    """

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, position: Any) -> None:
        self.model = model
        self.forward = type(model).forward.__get__(model, type(model))
        accepted = inspect.signature(type(model).forward).parameters
        self.kwargs: dict[str, Any] = {"attention_mask": mask, "return_dict": True}
        if "use_cache" in accepted:
            self.kwargs["use_cache"] = False
        generates = getattr(model, "can_generate", None)
        if "position_ids" in accepted and callable(generates) and generates():
            # As generate() does: left padding does not shift the positions of the real tokens.
            self.kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        self.mask = mask
        self.position = position
        #: The explained position per sample (``None`` for classifiers); known before the first forward
        #: pass for models that keep logits, else set by it.
        self.positions: torch.Tensor | None = None
        self.keep: tuple[torch.Tensor, torch.Tensor] | None = None
        if "logits_to_keep" in accepted:
            self.positions = _positions(position, mask)
            self.keep = torch.unique(self.positions, return_inverse=True)

    def logits(self, embeddings: torch.Tensor, **extra: Any) -> torch.Tensor:
        """The model's logits for ``embeddings``."""
        output = self.forward(inputs_embeds=embeddings, **self.kwargs, **extra)
        logits = getattr(output, "logits", None)
        if not isinstance(logits, torch.Tensor):
            raise SpecError(
                f"explain_tokens: {type(self.model).__name__} returns no logits; use a model with a head "
                "(...ForCausalLM, ...LMHeadModel, ...ForMaskedLM, ...ForSequenceClassification)"
            )
        return logits

    def selected(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The logits the target chooses from: at the explained positions (language models), or per sequence."""
        if self.keep is not None:
            kept, index = self.keep
            logits = self.logits(embeddings, logits_to_keep=kept)
            return logits[torch.arange(logits.shape[0], device=logits.device), index]
        logits = self.logits(embeddings)
        if logits.ndim != 3:
            if self.position is not None:
                raise SpecError(f"position= is for language models; {type(self.model).__name__} returns one logit "
                                "vector per sequence")
            return logits
        if self.positions is None:
            self.positions = _positions(self.position, self.mask)
        return logits[torch.arange(logits.shape[0], device=logits.device), self.positions]


class _Chooser:
    """The target callable: the one-hot of each sample's target, chosen on the first output it sees, times it."""

    def __init__(self, target: Any, tokenizer: Any, model: torch.nn.Module, call: _Call) -> None:
        self.target, self.tokenizer, self.model, self.call = target, tokenizer, model, call
        self.targets: torch.Tensor | None = None
        self.onehot: torch.Tensor | None = None

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        if self.targets is None:
            language = self.call.positions is not None
            self.targets = _targets(self.target, out.detach(), self.tokenizer, self.model, language)
            self.onehot = torch.nn.functional.one_hot(self.targets, out.shape[-1]).to(out.dtype)
        return out * self.onehot


def _token_ids(input_ids: Any, attention_mask: Any, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` as 2-d tensors from ids, texts or a tokenizer's output."""
    if isinstance(input_ids, str) or (
        isinstance(input_ids, (list, tuple)) and input_ids and all(isinstance(t, str) for t in input_ids)
    ):
        if tokenizer is None:
            raise SpecError("explain_tokens: texts need tokenizer=; or pass token ids")
        encoded = tokenizer([input_ids] if isinstance(input_ids, str) else list(input_ids), return_tensors="pt",
                            padding=True)
        input_ids = encoded
    if isinstance(input_ids, Mapping):
        if "input_ids" not in input_ids:
            raise SpecError("explain_tokens: a mapping input needs the key 'input_ids' (a tokenizer's output)")
        if attention_mask is None:
            attention_mask = input_ids.get("attention_mask")
        input_ids = input_ids["input_ids"]
    ids = torch.as_tensor(input_ids)
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.ndim not in (1, 2) or ids.numel() == 0:
        raise SpecError(
            f"explain_tokens: input_ids must be integer token ids shaped (batch, tokens) or (tokens,) "
            f"(got dtype {str(ids.dtype).replace('torch.', '')}, shape {tuple(ids.shape)})"
        )
    ids = ids.long().reshape(-1, ids.shape[-1])
    if attention_mask is None:
        return ids, torch.ones_like(ids)
    mask = torch.as_tensor(attention_mask).reshape(-1, ids.shape[-1]) if torch.as_tensor(attention_mask).numel() \
        == ids.numel() else None
    if mask is None or bool(((mask != 0) & (mask != 1)).any()):
        raise SpecError(f"explain_tokens: attention_mask must hold 0 or 1 for each of the {tuple(ids.shape)} token ids")
    if bool((mask.sum(-1) == 0).any()):
        raise SpecError("explain_tokens: a sequence has no real token (its attention_mask is all zero)")
    return ids, mask.long()


def _positions(position: Any, mask: torch.Tensor) -> torch.Tensor:
    """The explained position of each sample (see :func:`explain_tokens`)."""
    batch, length = mask.shape
    index = torch.arange(length, device=mask.device).expand(batch, -1)
    last = torch.where(mask.bool(), index, -1).max(-1).values
    if position is None:
        return last
    wanted = torch.as_tensor(position, device=mask.device)
    if wanted.is_floating_point() or wanted.dtype == torch.bool or wanted.ndim > 1 or (
        wanted.ndim == 1 and len(wanted) != batch
    ):
        raise SpecError(f"position must be an integer or one integer per sample ({batch}); got {position!r}")
    wanted = wanted.long().expand(batch)
    resolved = torch.where(wanted < 0, last + 1 + wanted, wanted)
    outside = (resolved < 0) | (resolved >= length)
    if bool(outside.any()):
        raise SpecError(
            f"position {wanted.tolist()} is out of range for sequences of {length} tokens "
            "(0 to length-1, or negative from the last real token)"
        )
    on_padding = mask.gather(1, resolved[:, None])[:, 0] == 0
    if bool(on_padding.any()):
        raise SpecError(f"position {resolved.tolist()} falls on padding in sample(s) "
                        f"{on_padding.nonzero()[:, 0].tolist()}; choose a real token")
    return resolved


def _targets(target: Any, logits: torch.Tensor, tokenizer: Any, model: torch.nn.Module, tokens: bool) -> torch.Tensor:
    """One target index per sample: ``None`` the largest logit, else ids, token strings or labels."""
    batch, size = logits.shape
    if target is None:
        return logits.argmax(-1)
    items = list(target) if isinstance(target, (list, tuple)) else (
        target.tolist() if isinstance(target, torch.Tensor) and target.ndim == 1 else [target] * batch
    )
    if isinstance(target, torch.Tensor) and target.ndim == 0:
        items = [target.item()] * batch
    if len(items) != batch:
        raise SpecError(f"target must be one value or one per sample ({batch}); got {len(items)}")
    ids = [_target_index(item, size, tokenizer, model, tokens) for item in items]
    return torch.tensor(ids, dtype=torch.long, device=logits.device)


def _target_index(item: Any, size: int, tokenizer: Any, model: torch.nn.Module, tokens: bool) -> int:
    what = "token id" if tokens else "class"
    if isinstance(item, str):
        return _token_id(item, tokenizer) if tokens else _label(item, model)
    if not isinstance(item, Integral) or isinstance(item, bool):
        raise SpecError(f"target must be a {what}, a {'token string' if tokens else 'label'} or None (got {item!r})")
    if not 0 <= int(item) < size:
        kinds = "tokens" if tokens else "classes"
        raise SpecError(f"target {what} {int(item)} is out of range: the model has {size} {kinds}")
    return int(item)


def _token_id(token: str, tokenizer: Any) -> int:
    if tokenizer is None:
        raise SpecError(f"target {token!r} is a token string: pass tokenizer= (or give the token id)")
    vocabulary = tokenizer.get_vocab()
    if token in vocabulary:
        return int(vocabulary[token])
    encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
    unknown = getattr(tokenizer, "unk_token_id", None)
    if len(encoded) == 1 and encoded[0] != unknown:
        return int(encoded[0])
    if not encoded or (unknown is not None and unknown in encoded):
        raise SpecError(f"target {token!r} is not a token of the tokenizer's vocabulary")
    pieces = tokenizer.convert_ids_to_tokens(encoded)
    raise SpecError(f"target {token!r} is {len(encoded)} tokens ({pieces}); give one token")


def _label(label: str, model: torch.nn.Module) -> int:
    known = dict(getattr(model.config, "label2id", None) or {})
    if label not in known:
        raise SpecError(f"target {label!r} is not a label of the model (config.label2id: {sorted(known)})")
    return int(known[label])


def _strings(ids: torch.Tensor, tokenizer: Any) -> tuple[tuple[str, ...], ...] | None:
    if tokenizer is None:
        return None
    return tuple(tuple(tokenizer.convert_ids_to_tokens(row)) for row in ids.tolist())


def _target_strings(targets: torch.Tensor, tokenizer: Any, model: torch.nn.Module, tokens: bool):
    if tokens:
        return None if tokenizer is None else tuple(tokenizer.convert_ids_to_tokens(targets.tolist()))
    labels = getattr(model.config, "id2label", None) or {}
    return tuple(str(labels.get(int(t), int(t))) for t in targets.tolist())


__all__ = ("TokenExplanation", "explain_tokens")
