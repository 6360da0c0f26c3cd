"""LXT 2.1's relevance for a torchvision VisionTransformer, run in its own process.

LXT patches the forward methods of torch's GELU, LayerNorm and MultiheadAttention classes for the
whole process (and Zennit's hooks for the gamma rule), so the tests run it here, never in the test
process. Usage: ``python lxt_reference.py DIR`` with ``DIR/case.pt`` holding the model's config,
``state_dict``, the input, the target class and the rules; writes ``DIR/relevance.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torchvision.models import vision_transformer


def main(folder: Path) -> None:
    case = torch.load(folder / "case.pt", weights_only=True)
    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from lxt.efficient.models.vit_torch import cp_LRP

    monkey_patch(vision_transformer, cp_LRP)
    model = vision_transformer.VisionTransformer(**case["config"]).to(torch.float64).eval()
    model.load_state_dict(case["state_dict"])
    x = case["input"].clone().requires_grad_()
    onehot = torch.zeros(x.shape[0], case["config"]["num_classes"], dtype=x.dtype)
    onehot[:, case["target"]] = 1
    gammas = case.get("gamma")
    if gammas is None:
        out = model(x)
        (grad,) = torch.autograd.grad(out, x, onehot)
    else:
        from zennit.composites import LayerMapComposite
        from zennit.rules import Gamma

        monkey_patch_zennit()
        stabilizer = float(case["stabilizer"])
        composite = LayerMapComposite([
            (torch.nn.Conv2d, Gamma(gamma=float(gammas[0]), stabilizer=stabilizer)),
            (torch.nn.Linear, Gamma(gamma=float(gammas[1]), stabilizer=stabilizer)),
        ])
        with composite.context(model) as modified:
            out = modified(x)
            (grad,) = torch.autograd.grad(out, x, onehot)
    torch.save({"relevance": (x * grad).detach(), "output": out.detach()}, folder / "relevance.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
