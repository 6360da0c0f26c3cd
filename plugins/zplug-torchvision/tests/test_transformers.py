"""torchvision's vision transformers and ConvNeXt: conservation, the ledger, restore, LXT parity.

Small configurations of the real torchvision classes in float64 (the code paths are those of
vit_b_16, swin_t, swin_v2_t, maxvit_t, convnext_tiny). Without additive constants (biases,
position embeddings, the class token, relative-position biases zeroed) CP-LRP conserves
relevance exactly, which pins every canonizer and rule on the path; AttnLRP's softmax rule
absorbs relevance by design, and the ledger must say where. LXT 2.1 (its torchvision-ViT map,
CP-LRP inside attention) runs in a subprocess because it patches torch classes process-wide.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.maxvit import MaxVit
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2
from torchvision.models.vision_transformer import VisionTransformer

import zplug
from zplug.canonizers import auto_canonizers
from zplug.registry import PluginRegistry

STABILIZER = 1e-12
VIT = {"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64,
       "num_classes": 10}
#: name -> (factory, input size, family canonizer)
FAMILIES = {
    "vit": (lambda: VisionTransformer(**VIT), 32, "vit"),
    "swin": (lambda: SwinTransformer([4, 4], 16, [2, 2], [2, 2], [4, 4], num_classes=10), 32, "swin"),
    "swin_v2": (
        lambda: SwinTransformer([4, 4], 16, [2, 2], [2, 2], [4, 4], num_classes=10, block=SwinTransformerBlockV2,
                                downsample_layer=PatchMergingV2),
        32,
        "swin",
    ),
    "maxvit": (
        lambda: MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32],
                       block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=10),
        32,
        "maxvit",
    ),
    "convnext": (lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10), 32,
                 "convnext"),
}
#: Parameters that are additive constants: zeroed for the conservation tests.
CONSTANTS = ("bias", "pos_embedding", "class_token", "relative_position_bias_table")


def _model(name: str, constants: bool = False) -> tuple[torch.nn.Module, torch.Tensor]:
    """The family's small model in float64 with seeded random weights (torchvision zero-initialises some)."""
    factory, size, _ = FAMILIES[name]
    torch.manual_seed(0)
    model = factory().double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if any(pname.endswith(c) for c in CONSTANTS):
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype) if constants else torch.zeros_like(p))
            elif p.ndim == 1 or "layer_scale" in pname:  # norm scales and layer scales: positive, near 1
                p.uniform_(0.5, 1.5, generator=g)
            else:
                p.normal_(0, p[0].numel() ** -0.5, generator=g)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=g) if constants else 0)
                module.running_var.uniform_(0.5, 1.5, generator=g)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return model, x


def _explain(model, x, preset, target=3, **params):
    onehot = torch.nn.functional.one_hot(torch.tensor([target] * x.shape[0]), 10).to(x.dtype)
    return zplug.explain(model, x, target=lambda out: out * onehot, preset=preset, ledger=True,
                         epsilon=STABILIZER, stabilizer=STABILIZER, **params)


def _state(model):
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return tensors, [(n, tuple(sorted(m.__dict__)), tuple(m._modules)) for n, m in model.named_modules()]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_auto_picks_the_family_canonizer(name):
    model, _ = _model(name)
    chosen = auto_canonizers(model, PluginRegistry(autoload=True))
    assert [(n, p) for n, _, p in chosen] == [(FAMILIES[name][2], "torchvision")]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_cp_lrp_conserves_without_additive_constants(name):
    model, x = _model(name)
    before = _state(model)
    explanation = _explain(model, x, "cp_lrp")
    assert not explanation.mapping.unmapped
    logits = explanation.output[:, 3]
    for sample in range(x.shape[0]):
        total = float(explanation.relevance[sample].sum())
        assert abs(total - float(logits[sample])) <= 1e-6 * abs(float(logits[sample])), (sample, total)
    ledger = explanation.ledger
    assert abs(ledger.leaked) <= 1e-9 * abs(ledger.output)
    tensors, layout = _state(model)
    assert layout == before[1] and all(torch.equal(tensors[k], v) for k, v in before[0].items())


@pytest.mark.parametrize("name", ["vit", "swin_v2", "maxvit"])
def test_attnlrp_gap_is_the_softmax_rule_and_the_ledger_shows_it(name):
    model, x = _model(name)
    ledger = _explain(model, x, "attnlrp").ledger
    layers = [e for e in ledger.entries if e.kind == "layer"]
    softmax = sum(e.lost for e in layers if e.rule == "softmax")
    # Swin v2's relative-position bias, 16 sigmoid(mlp(coordinates)), is not zero even with zero parameters:
    # the epsilon rule on the addition hands it its share, which the bias keeps.
    bias = sum(e.lost for e in layers if e.name.endswith("position_bias"))
    assert abs(softmax) > 1e-3 * abs(ledger.output)  # the rule is not conservative ...
    assert abs(ledger.absorbed - softmax - bias) <= 1e-8 * abs(ledger.output)  # ... and nothing else absorbs
    assert (abs(bias) > 1e-6 * abs(ledger.output)) == (name == "swin_v2")
    assert abs(ledger.leaked) <= 1e-9 * abs(ledger.output)
    assert abs(ledger.residual) <= 1e-9 * abs(ledger.output)
    assert "softmax" in str(ledger)


def test_gamma_presets_give_each_layer_group_its_gamma():
    model, _ = _model("vit")
    mapping = zplug.resolve(model, "cp_lrp_gamma", gamma_patch=0.5, gamma_attention=0.1, gamma_mlp=0.2, gamma_head=0.0)
    gammas = {e.name: e.rule.gamma for e in mapping.entries if e.rule is not None and e.rule.name == "gamma"}
    assert gammas["conv_proj"] == 0.5
    assert gammas["heads.head"] == 0.0
    layer = "encoder.layers.encoder_layer_0."
    assert {gammas[layer + f"self_attention.{p}"] for p in ("q_proj", "k_proj", "v_proj", "out_proj")} == {0.1}
    assert gammas[layer + "mlp.0"] == gammas[layer + "mlp.3"] == 0.2


# -- LXT 2.1 -------------------------------------------------------------------------------------------
def _lxt(tmp_path: Path, model, x, config, target, gamma=None):
    case = {"config": config, "state_dict": model.state_dict(), "input": x, "target": target}
    if gamma is not None:
        case.update(gamma=gamma, stabilizer=STABILIZER)
    torch.save(case, tmp_path / "case.pt")
    script = Path(__file__).with_name("lxt_reference.py")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "relevance.pt", weights_only=True)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _vit_with_constants():
    model, x = _model("vit", constants=True)  # biases, position embedding and class token non-zero
    return model, x


def test_cp_lrp_equals_lxt_on_torchvision_vit(tmp_path):
    pytest.importorskip("lxt")
    pytest.importorskip("transformers")
    model, x = _vit_with_constants()
    reference = _lxt(tmp_path, model, x, VIT, target=3)
    ours = _explain(model, x, "cp_lrp")
    torch.testing.assert_close(ours.output, reference["output"], rtol=1e-10, atol=1e-12)
    assert _relative(ours.relevance, reference["relevance"]) <= 1e-5


def test_cp_lrp_gamma_equals_lxt_with_zennit_gamma(tmp_path):
    pytest.importorskip("lxt")
    pytest.importorskip("transformers")
    model, x = _vit_with_constants()
    reference = _lxt(tmp_path, model, x, VIT, target=5, gamma=(0.25, 0.05))
    # LXT's Zennit hooks cannot reach the projections inside MultiheadAttention (torch computes them from
    # the weights), so they keep the plain gradient there: gamma 0 on the attention group.
    ours = _explain(model, x, "cp_lrp_gamma", target=5, gamma_patch=0.25, gamma_mlp=0.05, gamma_head=0.05,
                    gamma_attention=0.0)
    assert _relative(ours.relevance, reference["relevance"]) <= 1e-5


@pytest.mark.skipif(os.environ.get("ZPLUG_SLOW") != "1", reason="real vit_b_16 shapes (minutes): set ZPLUG_SLOW=1")
def test_vit_b_16_shapes_cp_lrp_conserves_and_equals_lxt(tmp_path):
    pytest.importorskip("lxt")
    config = {"image_size": 224, "patch_size": 16, "num_layers": 12, "num_heads": 12, "hidden_dim": 768,
              "mlp_dim": 3072, "num_classes": 10}
    torch.manual_seed(0)
    model = VisionTransformer(**config).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if any(pname.endswith(c) for c in CONSTANTS):
                p.zero_()
            elif p.ndim == 1:
                p.uniform_(0.5, 1.5, generator=g)
            else:
                p.normal_(0, p[0].numel() ** -0.5, generator=g)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = _explain(model, x, "cp_lrp")
    logit = float(ours.output[0, 3])
    assert abs(float(ours.relevance.sum()) - logit) <= 1e-6 * abs(logit)
    reference = _lxt(tmp_path, model, x, config, target=3)
    assert _relative(ours.relevance, reference["relevance"]) <= 1e-5
