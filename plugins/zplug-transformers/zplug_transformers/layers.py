"""The plugin's own module: the rotary position embedding as one call that a rule can sit on.

Llama, Qwen and Gemma rotate each query and key vector by angles that depend on its position only:
``x * cos + rotate_half(x) * sin``. The angles are constants of the input (they come from the
position ids), so the rotation is a linear map of ``x``. Written as functions, its products
with ``cos`` and ``sin`` and the negation in ``rotate_half`` scale relevance the way a gradient
does; as a module, it is a ``gate`` layer: the ``product`` rule hands ``x``, its only operand that
carries relevance, ``x * J^T (R / stab(y))``, which is LRP-epsilon on the linear map.
"""

from __future__ import annotations

import torch


class Rotate(torch.nn.Module):
    """``x * cos + rotate_half(x) * sin``: Hugging Face's rotary position embedding for one tensor.

    ``rotate_half`` swaps the two halves of the last dimension and negates the new first half,
    as in ``transformers.models.llama.modeling_llama.rotate_half``; the arithmetic is the same, so
    the output is bit for bit Hugging Face's.
    """

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Return the rotated ``x`` (``cos`` and ``sin`` broadcast against it)."""
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return (x * cos) + (rotated * sin)


__all__ = ("Rotate",)
