"""The rewritten forwards of Hugging Face's transformer blocks: every operation a rule needs as a module call.

Imported when a family canonizer first rewrites a model (it needs torch); declaring the canonizers
imports nothing of it. Each forward computes what the class's own forward computes, with the same
arithmetic where it matters, and with these operations as calls of children that the canonizer adds
for the duration:

* attention: one :class:`~zplug_transformers.layers.Attention` child (``attention``) with ``scores``
  (:class:`zplug.layers.MatMul` with the scale), ``softmax`` (``torch.nn.Softmax``, in float32 where
  Hugging Face upcasts) and ``context`` (``MatMul`` whose value operand is ``v``); the rotary
  embedding of queries and keys as :class:`~zplug_transformers.layers.Rotate` calls (``rotary_query``,
  ``rotary_key``). Masks are added or filled as constants, which passes no relevance to masked
  positions. Both of Hugging Face's ``eager`` and ``sdpa`` attention are reproduced (weights
  returned by ``eager`` only);
* residual additions through ``zplug.layers.Sum`` (``residual_attention``, ``residual_mlp``);
* gated MLPs ``down(act(gate(x)) * up(x))`` with the product as ``zplug.layers.Mul`` (``gate``, value ``up``);
* RMSNorm through ``torch.nn.functional.rms_norm`` in float32, so that ``frozen_scale`` can hold its scale.

:class:`zplug.canonizers.ForwardRewrite` compares each rewritten module with its original forward on
its first call and undoes the rewrite if they differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from zplug.canonizers import CanonizerError, Rewrite
from zplug.layers import Mul, Sum
from zplug_transformers.layers import Attention, Rotate, attend

#: Hugging Face attention implementations that the rewrites reproduce.
IMPLEMENTATIONS = ("eager", "sdpa")


# -- attention -------------------------------------------------------------------------------------
def _sdpa_masks(
    mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, is_causal: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``F.scaled_dot_product_attention``'s mask conventions as ``(blocked, additive)`` for :func:`attend`."""
    blocked = additive = None
    if mask is not None:
        mask = mask[:, :, :, : k.shape[-2]]
        if mask.dtype == torch.bool:
            blocked = ~mask
        else:
            additive = mask
    if is_causal:
        length, source = q.shape[-2], k.shape[-2]
        causal = ~torch.ones(length, source, dtype=torch.bool, device=q.device).tril()
        blocked = causal if blocked is None else blocked | causal
    return blocked, additive


def _no_cache(cache: Any, module: torch.nn.Module) -> None:
    """Refuse a key/value cache: the first call's check would run the original forward too and fill it twice."""
    if cache is not None:
        raise CanonizerError(
            f"the rewritten {type(module).__name__} cannot update a key/value cache: call the model with "
            "use_cache=False while explaining (explain_tokens does)"
        )


def _dropout(module: torch.nn.Module, p: float) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Hugging Face's dropout of the attention weights; ``None`` where it is the identity."""
    if p == 0.0 or not module.training:
        return None
    return lambda x: F.dropout(x, p=p, training=module.training)


def _attention_children(scale: float | None, groups: int = 1) -> dict[str, torch.nn.Module]:
    return {"attention": Attention(scale=scale, groups=groups)}


def _rotary_attention_forward(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    past_key_value: Any = None,
    cache_position: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Llama, Qwen2, Qwen3 and Gemma3 attention (rotary embedding, grouped queries, optional q/k norms)."""
    _no_cache(past_key_value, self)
    input_shape = hidden_states.shape[:-1]
    shape = (*input_shape, -1, self.head_dim)
    q = self.q_proj(hidden_states).view(shape)
    k = self.k_proj(hidden_states).view(shape)
    v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
    if hasattr(self, "q_norm"):  # RMSNorm over each head's vector: before or after the transpose is the same
        q, k = self.q_norm(q), self.k_norm(k)
    cos, sin = position_embeddings
    q = self.rotary_query(q.transpose(1, 2), cos.unsqueeze(1), sin.unsqueeze(1))
    k = self.rotary_key(k.transpose(1, 2), cos.unsqueeze(1), sin.unsqueeze(1))
    p = self.attention_dropout if self.training else 0.0
    if self.config._attn_implementation == "eager":
        out, weights = self.attention(q, k, v, additive=attention_mask, upcast=True, dropout=_dropout(self, p))
    else:
        is_causal = q.shape[2] > 1 and attention_mask is None and getattr(self, "is_causal", True)
        blocked, additive = _sdpa_masks(attention_mask, q, k, is_causal)
        out = self.attention(q, k, v, blocked=blocked, additive=additive, dropout=_dropout(self, p),
                             zero_blocked_rows=True, need_weights=False)
        weights = None
    out = out.transpose(1, 2).contiguous().reshape(*input_shape, -1).contiguous()
    return self.o_proj(out), weights


def _rotary_attention(name: str, module: torch.nn.Module) -> Rewrite:
    if getattr(module, "attn_logit_softcapping", None) is not None:
        raise CanonizerError(
            f"'{name}' ({type(module).__name__}) caps its attention logits with tanh (attn_logit_softcapping), "
            "which the rewrite does not reproduce; set config.attn_logit_softcapping = None"
        )
    groups = getattr(module, "num_key_value_groups", 1)
    children = {**_attention_children(module.scaling, groups), "rotary_query": Rotate(), "rotary_key": Rotate()}
    return Rewrite(name=name, module=module, forward=_bind(_rotary_attention_forward, module), children=children,
                   what="rotary_query, rotary_key, attention (scores, softmax, context) as modules")


def _gpt2_attention_forward(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    past_key_value: Any = None,
    cache_position: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    output_attentions: bool | None = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GPT-2's self-attention: ``c_attn`` split into q, k, v; causal mask from the ``bias`` buffer."""
    _no_cache(past_key_value, self)
    if encoder_hidden_states is not None or head_mask is not None:
        raise CanonizerError("gpt2: the rewritten attention supports neither cross-attention nor head_mask")
    q, k, v = self.c_attn(hidden_states).split(self.split_size, dim=2)
    shape = (*q.shape[:-1], -1, self.head_dim)
    q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
    eager = self.config._attn_implementation == "eager" or output_attentions
    if eager:
        scale = 1.0 / math.sqrt(v.size(-1)) if self.scale_attn_weights else 1.0
        if self.scale_attn_by_inverse_layer_idx:
            scale /= float(self.layer_idx + 1)
        self.attention.scores.scale = scale
        length, source = q.size(-2), k.size(-2)
        blocked = ~self.bias[:, :, source - length : source, :source]
        out, weights = self.attention(q, k, v, blocked=blocked, additive=attention_mask, dropout=self.attn_dropout)
        weights = weights.type(v.dtype)
    else:
        self.attention.scores.scale = 1.0 / math.sqrt(q.size(-1))  # Hugging Face's sdpa path passes no scale
        is_causal = attention_mask is None and q.shape[-2] > 1
        blocked, additive = _sdpa_masks(attention_mask, q, k, is_causal)
        p = self.attn_dropout.p if self.training else 0.0
        out = self.attention(q, k, v, blocked=blocked, additive=additive, dropout=_dropout(self, p),
                             zero_blocked_rows=True, need_weights=False)
        weights = None
    out = out.transpose(1, 2)
    out = out.reshape(*out.shape[:-2], -1).contiguous()
    return self.resid_dropout(self.c_proj(out)), weights


def _gpt2_attention(name: str, module: torch.nn.Module) -> Rewrite:
    if module.is_cross_attention or module.reorder_and_upcast_attn:
        raise CanonizerError(
            f"gpt2: '{name}' uses cross-attention or reorder_and_upcast_attn, which the rewrite does not reproduce"
        )
    return Rewrite(name=name, module=module, forward=_bind(_gpt2_attention_forward, module),
                   children=_attention_children(None), what="attention (scores, softmax, context) as modules")


def _bert_attention_forward(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    past_key_value: Any = None,
    output_attentions: bool | None = False,
) -> tuple[torch.Tensor, ...]:
    """BERT's self-attention (``BertSelfAttention`` and ``BertSdpaSelfAttention``), encoder use."""
    if encoder_hidden_states is not None or past_key_value is not None or head_mask is not None:
        raise CanonizerError("bert: the rewritten attention supports neither cross-attention, caches nor head_mask")
    q, k, v = (self.transpose_for_scores(layer(hidden_states)) for layer in (self.query, self.key, self.value))
    eager = not hasattr(self, "dropout_prob") or output_attentions
    if eager:
        out, weights = self.attention(q, k, v, additive=attention_mask, dropout=self.dropout)
    else:
        is_causal = self.is_decoder and attention_mask is None and q.shape[2] > 1
        blocked, additive = _sdpa_masks(attention_mask, q, k, is_causal)
        p = self.dropout_prob if self.training else 0.0
        out = self.attention(q, k, v, blocked=blocked, additive=additive, dropout=_dropout(self, p),
                             zero_blocked_rows=True, need_weights=False)
        weights = None
    out = out.permute(0, 2, 1, 3).contiguous()
    out = out.view(*out.shape[:-2], self.all_head_size)
    outputs = (out, weights) if eager and output_attentions else (out,)
    return outputs + ((k, v),) if self.is_decoder else outputs


def _bert_attention(name: str, module: torch.nn.Module) -> Rewrite:
    if module.position_embedding_type != "absolute":
        raise CanonizerError(
            f"bert: '{name}' uses position_embedding_type='{module.position_embedding_type}', which the rewrite "
            "does not reproduce (only 'absolute')"
        )
    children = _attention_children(1.0 / math.sqrt(module.attention_head_size))
    return Rewrite(name=name, module=module, forward=_bind(_bert_attention_forward, module), children=children,
                   what="attention (scores, softmax, context) as modules")


# -- residual blocks -------------------------------------------------------------------------------
def _pre_norm_layer_forward(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_value: Any = None,
    output_attentions: bool | None = False,
    use_cache: bool | None = False,
    cache_position: torch.Tensor | None = None,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, ...]:
    """Llama, Qwen2, Qwen3 decoder layer: norm, attention, residual; norm, MLP, residual."""
    attended, weights = self.self_attn(
        hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask, position_ids=position_ids,
        past_key_value=past_key_value, output_attentions=output_attentions, use_cache=use_cache,
        cache_position=cache_position, position_embeddings=position_embeddings, **kwargs,
    )  # fmt: skip
    hidden_states = self.residual_attention(hidden_states, attended)
    hidden_states = self.residual_mlp(hidden_states, self.mlp(self.post_attention_layernorm(hidden_states)))
    return (hidden_states, weights) if output_attentions else (hidden_states,)


def _gemma3_layer_forward(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings_global: tuple[torch.Tensor, torch.Tensor],
    position_embeddings_local: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_value: Any = None,
    output_attentions: bool | None = False,
    use_cache: bool | None = False,
    cache_position: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, ...]:
    """Gemma3 decoder layer: norms before and after attention and MLP, residuals through ``Sum``."""
    kwargs.pop("last_cache_position", None)
    embeddings = position_embeddings_local if self.self_attn.is_sliding else position_embeddings_global
    attended, weights = self.self_attn(
        hidden_states=self.input_layernorm(hidden_states), position_embeddings=embeddings,
        attention_mask=attention_mask, position_ids=position_ids, past_key_value=past_key_value,
        output_attentions=output_attentions, use_cache=use_cache, cache_position=cache_position, **kwargs,
    )  # fmt: skip
    hidden_states = self.residual_attention(hidden_states, self.post_attention_layernorm(attended))
    fed = self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(hidden_states)))
    hidden_states = self.residual_mlp(hidden_states, fed)
    return (hidden_states, weights) if output_attentions else (hidden_states,)


def _gpt2_block_forward(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    past_key_value: Any = None,
    cache_position: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    use_cache: bool | None = False,
    output_attentions: bool | None = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, ...]:
    """GPT-2 block: ``ln_1``, attention, residual; ``ln_2``, MLP, residual."""
    if encoder_hidden_states is not None:
        raise CanonizerError("gpt2: the rewritten block does not support cross-attention (encoder_hidden_states)")
    attended, weights = self.attn(
        self.ln_1(hidden_states), past_key_value=past_key_value, cache_position=cache_position,
        attention_mask=attention_mask, head_mask=head_mask, use_cache=use_cache, output_attentions=output_attentions,
        **kwargs,
    )  # fmt: skip
    hidden_states = self.residual_attention(attended, hidden_states)
    hidden_states = self.residual_mlp(hidden_states, self.mlp(self.ln_2(hidden_states)))
    return (hidden_states, weights) if output_attentions else (hidden_states,)


def _bert_output_forward(self: torch.nn.Module, hidden_states: torch.Tensor, input_tensor: torch.Tensor):
    """``BertSelfOutput``/``BertOutput``: ``LayerNorm(dropout(dense(h)) + input)`` with the sum as ``Sum``."""
    return self.LayerNorm(self.residual(self.dropout(self.dense(hidden_states)), input_tensor))


def _residual_layer(forward: Callable[..., Any], names: tuple[str, ...]) -> Callable[[str, torch.nn.Module], Rewrite]:
    def plan(name: str, module: torch.nn.Module) -> Rewrite:
        return Rewrite(name=name, module=module, forward=_bind(forward, module),
                       children={n: Sum() for n in names}, what=", ".join(names) + " as Sum")

    return plan


# -- MLP and normalisation -------------------------------------------------------------------------
def _gated_mlp_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``down(act(gate(x)) * up(x))`` with the product as a ``Mul`` whose value is ``up(x)``."""
    return self.down_proj(self.gate(self.act_fn(self.gate_proj(x)), self.up_proj(x)))


def _gated_mlp(name: str, module: torch.nn.Module) -> Rewrite:
    return Rewrite(name=name, module=module, forward=_bind(_gated_mlp_forward, module),
                   children={"gate": Mul(value=1)}, what="gate (act(gate_proj) * up_proj) as Mul")


def _rms_norm_forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """Llama's RMSNorm (``weight * normed(x in float32).to(dtype)``) through ``F.rms_norm``."""
    dtype = hidden_states.dtype
    normed = F.rms_norm(hidden_states.to(torch.float32), (hidden_states.shape[-1],), eps=self.variance_epsilon)
    return self.weight * normed.to(dtype)


def _gemma_rms_norm_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Gemma's RMSNorm (``(normed(x in float32) * (1 + weight)).type_as(x)``) through ``F.rms_norm``."""
    normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
    return (normed * (1.0 + self.weight.float())).type_as(x)


def _forward_only(forward: Callable[..., Any], what: str) -> Callable[[str, torch.nn.Module], Rewrite]:
    def plan(name: str, module: torch.nn.Module) -> Rewrite:
        return Rewrite(name=name, module=module, forward=_bind(forward, module), what=what)

    return plan


def _bind(function: Callable[..., Any], module: torch.nn.Module) -> Callable[..., Any]:
    return function.__get__(module, type(module))


# -- GPT-2's Conv1D --------------------------------------------------------------------------------
CONV1D = "transformers.pytorch_utils.Conv1D"


def linear_view(conv: torch.nn.Module) -> torch.nn.Linear:
    """A ``torch.nn.Linear`` computing what a ``Conv1D`` computes, with parameters that share its storage.

    ``Conv1D`` is ``x @ W + b`` with ``W`` shaped ``(in, out)``; the view's weight is ``W.t()`` (no copy), and
    ``F.linear`` then makes the same ``addmm`` call, so the outputs are bit for bit the same. Rules compute a
    ``Linear`` with explicit kernels, where a ``Conv1D`` would be run again under autograd to transpose it.
    Made without ``Linear.__init__`` (which would initialise parameters only to replace them).
    """
    layer = torch.nn.Linear.__new__(torch.nn.Linear)
    torch.nn.Module.__init__(layer)
    weight, bias = conv.weight, conv.bias
    layer.in_features, layer.out_features = weight.shape
    layer.weight = torch.nn.Parameter(weight.detach().t(), requires_grad=weight.requires_grad)
    layer.register_parameter(
        "bias", None if bias is None else torch.nn.Parameter(bias.detach(), requires_grad=bias.requires_grad)
    )
    layer.train(conv.training)
    return layer


def conv1d_views(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    """``(parent, name, view)`` for each child of ``model`` whose exact class is ``Conv1D`` (:func:`linear_view`)."""
    views = []
    for parent in model.modules():
        for name, child in parent._modules.items():
            if child is not None and class_path(type(child)) == CONV1D:
                views.append((parent, name, linear_view(child)))
    return views


# -- the families ----------------------------------------------------------------------------------
_PRE_NORM = _residual_layer(_pre_norm_layer_forward, ("residual_attention", "residual_mlp"))
_RMS_NORM = _forward_only(_rms_norm_forward, "RMSNorm through F.rms_norm (float32)")


def _llama_like(module: str, prefix: str) -> dict[str, Callable[[str, torch.nn.Module], Rewrite]]:
    path = f"transformers.models.{module}.modeling_{module}.{prefix}"
    return {f"{path}Attention": _rotary_attention, f"{path}DecoderLayer": _PRE_NORM, f"{path}MLP": _gated_mlp,
            f"{path}RMSNorm": _RMS_NORM}


_BERT = "transformers.models.bert.modeling_bert."
_GPT2 = "transformers.models.gpt2.modeling_gpt2."
_GEMMA3 = "transformers.models.gemma3.modeling_gemma3."

#: family canonizer name -> {exact class path: rewrite planner}
PLANS: dict[str, dict[str, Callable[[str, torch.nn.Module], Rewrite]]] = {
    "llama": _llama_like("llama", "Llama"),
    "qwen2": _llama_like("qwen2", "Qwen2"),
    "qwen3": _llama_like("qwen3", "Qwen3"),
    "gemma3": {
        f"{_GEMMA3}Gemma3Attention": _rotary_attention,
        f"{_GEMMA3}Gemma3DecoderLayer": _residual_layer(_gemma3_layer_forward, ("residual_attention", "residual_mlp")),
        f"{_GEMMA3}Gemma3MLP": _gated_mlp,
        f"{_GEMMA3}Gemma3RMSNorm": _forward_only(_gemma_rms_norm_forward, "RMSNorm through F.rms_norm (float32)"),
    },
    "gpt2": {
        f"{_GPT2}GPT2Attention": _gpt2_attention,
        f"{_GPT2}GPT2Block": _residual_layer(_gpt2_block_forward, ("residual_attention", "residual_mlp")),
    },
    "bert": {
        f"{_BERT}BertSelfAttention": _bert_attention,
        f"{_BERT}BertSdpaSelfAttention": _bert_attention,
        f"{_BERT}BertSelfOutput": _residual_layer(_bert_output_forward, ("residual",)),
        f"{_BERT}BertOutput": _residual_layer(_bert_output_forward, ("residual",)),
    },
}


def class_path(cls: type) -> str:
    """``module.QualifiedName`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def family_rewrites(model: torch.nn.Module, family: str) -> list[Rewrite]:
    """One rewrite per module of ``model`` whose exact class the family knows.

    Raises
    ------
    CanonizerError
        If the model uses an attention implementation other than ``eager`` or ``sdpa``, or a
        feature a rewrite does not reproduce.
    """
    plans = PLANS[family]
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise CanonizerError(
            f"{family}: the model uses attn_implementation='{implementation}'; the rewrites reproduce 'eager' and "
            "'sdpa' only: load it with attn_implementation='sdpa' (or set model.config._attn_implementation)"
        )
    plan = []
    for name, module in model.named_modules():
        planner = plans.get(class_path(type(module)))
        if planner is not None and "forward" not in module.__dict__:
            plan.append(planner(name, module))
    return plan


__all__ = (
    "CONV1D", "IMPLEMENTATIONS", "PLANS", "attend", "class_path", "conv1d_views", "family_rewrites", "linear_view",
)
