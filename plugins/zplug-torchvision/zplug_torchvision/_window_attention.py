"""The rewritten forwards of torchvision's window attention (Swin v1/v2, MaxViT).

Imported when :class:`zplug_torchvision.transformers.WindowAttention` first rewrites a model (it
needs torch and torchvision); registering the canonizers imports nothing of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

from zplug.canonizers import Rewrite
from zplug.layers import MatMul, Mul, Normalize, Sum


# -- Swin ------------------------------------------------------------------------------------------
def _shift_mask(x: torch.Tensor, window: list[int], shift: list[int], padded: tuple[int, int]) -> torch.Tensor:
    """Swin's attention mask for shifted windows: 0 within a region, -100 across regions; shape (nW, N, N)."""
    pad_h, pad_w = padded
    mask = x.new_zeros((pad_h, pad_w))
    h_slices = ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None))
    w_slices = ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None))
    region = 0
    for h in h_slices:
        for w in w_slices:
            mask[h[0] : h[1], w[0] : w[1]] = region
            region += 1
    windows = (pad_h // window[0]) * (pad_w // window[1])
    mask = mask.view(pad_h // window[0], window[0], pad_w // window[1], window[1])
    mask = mask.permute(0, 2, 1, 3).reshape(windows, window[0] * window[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _swin_attention_forward(self: ShiftedWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """``ShiftedWindowAttention(V2).forward`` with its operations as modules (same arithmetic as torchvision)."""
    window, heads = self.window_size, self.num_heads
    b, h, w, c = x.shape
    pad_r = (window[1] - w % window[1]) % window[1]
    pad_b = (window[0] - h % window[0]) % window[0]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_h, pad_w, _ = x.shape
    shift = list(self.shift_size)
    if window[0] >= pad_h:
        shift[0] = 0
    if window[1] >= pad_w:
        shift[1] = 0
    shifted = sum(shift) > 0
    if shifted:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = (pad_h // window[0]) * (pad_w // window[1])
    x = x.view(b, pad_h // window[0], window[0], pad_w // window[1], window[1], c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b * windows, window[0] * window[1], c)
    tokens = x.size(1)
    qkv = self.qkv(x).reshape(x.size(0), tokens, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    # The relative-position bias (and v2's logit scale) depend on parameters only: constants of the input.
    bias = self.get_relative_position_bias().detach()
    if isinstance(self, ShiftedWindowAttentionV2):
        scores = self.scores(self.normalize_q(q), self.normalize_k(k).transpose(-2, -1))
        logit_scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp().detach()
        scores = self.cosine_scale(scores, logit_scale)
    else:
        scores = self.scores(q, k.transpose(-2, -1))
    summands = [scores.view(b, windows, heads, tokens, tokens), bias.unsqueeze(0)]
    if shifted:
        summands.append(_shift_mask(x, window, shift, (pad_h, pad_w)).unsqueeze(1).unsqueeze(0))
    scores = self.position_bias(*summands).view(-1, heads, tokens, tokens)
    attn = F.dropout(self.softmax(scores), p=self.attention_dropout, training=self.training)
    x = self.context(attn, v).transpose(1, 2).reshape(x.size(0), tokens, c)
    x = F.dropout(self.proj(x), p=self.dropout, training=self.training)
    x = x.view(b, pad_h // window[0], pad_w // window[1], window[0], window[1], c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, pad_h, pad_w, c)
    if shifted:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


def _swin_children(module: ShiftedWindowAttention) -> dict[str, torch.nn.Module]:
    children: dict[str, torch.nn.Module] = {}
    if isinstance(module, ShiftedWindowAttentionV2):
        children.update(normalize_q=Normalize(dim=-1), normalize_k=Normalize(dim=-1), cosine_scale=Mul(),
                        scores=MatMul())
    else:
        head_size = module.qkv.in_features // module.num_heads
        children["scores"] = MatMul(scale=head_size**-0.5)  # torchvision scales q before the product
    children.update(position_bias=Sum(), softmax=torch.nn.Softmax(dim=-1), context=MatMul(value=1))
    return children


# -- MaxViT ----------------------------------------------------------------------------------------
def _maxvit_attention_forward(self: RelativePositionalMultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """``RelativePositionalMultiHeadAttention.forward`` with matmul modules instead of ``einsum``."""
    b, g, p, d = x.shape
    heads, size = self.n_heads, self.head_dim
    q, k, v = torch.chunk(self.to_qkv(x), 3, dim=-1)
    q, k, v = (t.reshape(b, g, p, heads, size).permute(0, 1, 3, 2, 4) for t in (q, k, v))
    scores = self.scores(q, k.transpose(-2, -1))  # torchvision scales k by scale_factor: folded in
    scores = self.position_bias(scores, self.get_relative_positional_bias().detach())
    out = self.context(self.softmax(scores), v)
    return self.merge(out.permute(0, 1, 3, 2, 4).reshape(b, g, p, d))


def _maxvit_children(module: RelativePositionalMultiHeadAttention) -> dict[str, torch.nn.Module]:
    return {"scores": MatMul(scale=module.scale_factor), "position_bias": Sum(), "softmax": torch.nn.Softmax(dim=-1),
            "context": MatMul(value=1)}


_WINDOW_ATTENTION = (
    (ShiftedWindowAttentionV2, _swin_attention_forward, _swin_children),
    (ShiftedWindowAttention, _swin_attention_forward, _swin_children),
    (RelativePositionalMultiHeadAttention, _maxvit_attention_forward, _maxvit_children),
)


def window_attention_rewrites(model: torch.nn.Module) -> list[Rewrite]:
    """One rewrite per attention module of an exact known class (Swin v1/v2, MaxViT)."""
    plan = []
    for name, module in model.named_modules():
        if "forward" in module.__dict__:
            continue
        for cls, forward, children in _WINDOW_ATTENTION:
            if type(module) is cls:
                made = children(module)
                plan.append(Rewrite(name=name, module=module, forward=forward.__get__(module, cls), children=made,
                                    what=", ".join(made) + " as modules"))
                break
    return plan


__all__ = ("window_attention_rewrites",)
