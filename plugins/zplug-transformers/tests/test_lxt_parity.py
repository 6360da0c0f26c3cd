"""AttnLRP and CP-LRP equal LXT 2.1's efficient mode on every family it supports (float32, 1e-5 relative).

LXT runs in a subprocess (it patches ``transformers`` process-wide): ``lxt_reference.py``, one process
per LXT variant for all families. Biases are non-zero, so the rules must also treat them as LXT does.
LXT 2.1 has no CP-LRP map for BERT, so BERT is compared for AttnLRP only. LXT reads relevance at the token
embedding (``x * grad``); its gradient there is that of what enters the first layer, and zplug gives that
whole relevance to the token (GPT-2's and BERT's position and token-type embeddings are added constants):
the reference is ``x * grad`` with ``x`` what enters the first layer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from zplug_transformers import explain_tokens
from zplug_transformers._rewrites import class_path
from zplug_transformers.testing import FAMILIES, tiny, token_ids

pytest.importorskip("lxt")

VARIANTS = {"attnlrp": "attnLRP", "cp_lrp": "cp_LRP"}
CASES = [(f, i, p) for f in FAMILIES for i in ("eager", "sdpa") for p in VARIANTS if (f, p) != ("bert", "cp_lrp")]
STABILIZER = 1e-12


def _case(family: str, implementation: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = tiny(family, implementation, torch.float32, biases=True)
    ids = token_ids(2, 7)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0 if family != "bert" else 1  # left padding for the causal models
    if family == "bert":
        mask[1, -2:] = 0  # right padding for BERT
    return model, ids, mask


@pytest.fixture(scope="module")
def lxt(tmp_path_factory):
    """``{(family, implementation, preset): (zplug's explanation, LXT's relevance and logits)}``."""
    ours = {}
    folders = {p: tmp_path_factory.mktemp(p) for p in VARIANTS}
    for family, implementation, preset in CASES:
        model, ids, mask = _case(family, implementation)
        explained = explain_tokens(model, ids, attention_mask=mask, preset=preset, epsilon=STABILIZER,
                                   stabilizer=STABILIZER)
        ours[family, implementation, preset] = explained
        kwargs = {"attention_mask": mask}
        if family != "bert":
            kwargs.update(use_cache=False, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        config = model.config
        torch.save({
            "family": family, "implementation": implementation, "dtype": torch.float32,
            "config": config.to_dict(), "config_class": type(config).__name__,
            "model_class": class_path(type(model)).rsplit(".", 1)[1], "state_dict": model.state_dict(),
            "input_ids": ids, "kwargs": kwargs, "positions": explained.position, "targets": explained.target,
        }, folders[preset] / f"{family}-{implementation}.case.pt")  # fmt: skip
    script = Path(__file__).with_name("lxt_reference.py")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for preset, variant in VARIANTS.items():
        done = subprocess.run([sys.executable, str(script), str(folders[preset]), variant], capture_output=True,
                              text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    return {
        key: (e, torch.load(folders[key[2]] / f"{key[0]}-{key[1]}.relevance.pt", weights_only=True))
        for key, e in ours.items()
    }


@pytest.mark.parametrize(("family", "implementation", "preset"), CASES)
def test_relevance_equals_lxt(lxt, family, implementation, preset):
    ours, reference = lxt[family, implementation, preset]
    torch.testing.assert_close(ours.output, reference["logits"], rtol=1e-5, atol=1e-6)
    difference = (ours.relevance - reference["relevance"]).abs().max() / reference["relevance"].abs().max()
    assert float(difference) <= 1e-5, f"{float(difference):.3g}"  # measured: at most 7e-7
