"""LXT 2.1's efficient-mode relevance for tiny Hugging Face models, run in its own process.

LXT replaces forwards and functions of ``transformers``' modeling modules for the whole process
(BERT's whole module), so the tests run it here, never in the test process. One process per LXT
variant (``attnLRP`` or ``cp_LRP``): it cannot patch a module twice.

Usage: ``python lxt_reference.py DIR VARIANT``; every ``DIR/*.case.pt`` holds the family, the model's
config (a dict) and class, its ``state_dict``, the token ids, the mask, the call's keyword arguments and
the explained (position, token or class) per sample. Writes ``DIR/NAME.relevance.pt``: the relevance per
token, ``x * grad`` at what enters the first layer (the token embedding plus GPT-2's and BERT's additive
embeddings, whose gradient is the token embedding's), summed over the hidden dimension, and the logits.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import torch

MODULES = {
    "llama": "transformers.models.llama.modeling_llama",
    "qwen2": "transformers.models.qwen2.modeling_qwen2",
    "qwen3": "transformers.models.qwen3.modeling_qwen3",
    "gemma3": "transformers.models.gemma3.modeling_gemma3",
    "gpt2": "transformers.models.gpt2.modeling_gpt2",
    "bert": "transformers.models.bert.modeling_bert",
}
#: The module whose input is what enters the first layer (GPT-2: after the position embedding; BERT: before
#: the embeddings' LayerNorm); ``None``: the token embedding itself.
FIRST = {"gpt2": "transformer.drop", "bert": "bert.embeddings.LayerNorm"}


def relevance(case: dict, modeling) -> dict:
    config = getattr(modeling, case["config_class"]).from_dict(case["config"])
    config._attn_implementation = case["implementation"]
    model = getattr(modeling, case["model_class"])(config).to(case["dtype"]).eval()
    model.load_state_dict(case["state_dict"])
    ids = case["input_ids"]
    embeddings = model.get_input_embeddings()(ids).detach().requires_grad_()
    entering = {}
    first = FIRST.get(case["family"])
    if first is not None:
        model.get_submodule(first).register_forward_pre_hook(lambda m, args: entering.setdefault("x", args[0]))
    logits = model(inputs_embeds=embeddings, **case["kwargs"]).logits
    rows = torch.arange(len(ids))
    chosen = logits[rows, case["positions"]] if case["positions"] is not None else logits
    explained = chosen[rows, case["targets"]]
    (grad,) = torch.autograd.grad(explained.sum(), embeddings)  # x * grad then sums to the logit
    x = entering.get("x", embeddings).detach()
    return {"relevance": (x * grad).sum(-1).detach(), "logits": chosen.detach()}


def main(folder: Path, variant: str) -> None:
    from lxt.efficient import monkey_patch

    warnings.simplefilter("ignore")
    cases = sorted(folder.glob("*.case.pt"))
    families = {torch.load(path, weights_only=False)["family"] for path in cases}
    modules = {}
    for family in sorted(families):
        modeling = importlib.import_module(MODULES[family])
        patches = importlib.import_module(f"lxt.efficient.models.{family}")
        monkey_patch(modeling, getattr(patches, variant))
        modules[family] = modeling
    for path in cases:
        case = torch.load(path, weights_only=False)
        result = relevance(case, modules[case["family"]])
        torch.save(result, path.with_name(path.name.replace(".case.pt", ".relevance.pt")))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
