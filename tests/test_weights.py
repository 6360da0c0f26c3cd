"""``--weights FILE`` and ``--model package.module:factory``: our own messages, checkpoints, NaN, the current folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import zplug
from zplug.cli import main
from zplug.cli._weights import first_sentence, read_state_dict
from zplug.demo.model import load_model
from zplug.demo.samples import samples_dir
from zplug.discovery import InputError

CIRCLE0 = samples_dir() / "circle" / "circle_0.png"
ADVICE = "save the weights with torch.save(model.state_dict(), FILE)"


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["explain", *args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    model = load_model()
    state = model.state_dict()
    paths = {}

    def save(name, obj, **kwargs):
        paths[name] = tmp_path / f"{name}.pt"
        torch.save(obj, paths[name], **kwargs)

    save("whole", model)
    save("model_key", {"model": state, "epoch": 3})
    save("state_dict_key", {"state_dict": state, "best": torch.tensor(0.9)})
    broken = {k: v.clone() for k, v in state.items()}
    broken["fc2.weight"][0, :2] = float("nan")
    broken["fc2.weight"][1, 0] = float("inf")
    broken["conv1.weight"][0, 0, 0, 0] = float("-inf")
    save("nan", broken)
    save("legacy", state, _use_new_zipfile_serialization=False)
    for name in ("state_dict_key", "legacy"):
        data = paths[name].read_bytes()
        paths[f"cut_{name}"] = tmp_path / f"cut_{name}.pt"
        paths[f"cut_{name}"].write_bytes(data[: len(data) // 2])
    paths["empty"] = tmp_path / "empty.pt"
    paths["empty"].write_bytes(b"")
    return paths


def test_unreadable_weights_get_messages_of_our_own(files):
    expected = {
        "whole": "weights file '{p}' holds Python objects, not only tensors (zplug.demo.model.DemoNet): it was saved "
                 "with torch.save(model) or holds other classes, and zplug loads tensors only, without running code "
                 "from the file; " + ADVICE,
        "cut_state_dict_key": "weights file '{p}' is truncated or damaged (its zip archive is incomplete); copy or "
                              "download it again, or " + ADVICE,
        "cut_legacy": "weights file '{p}' cannot be read: it is truncated or damaged (unexpected EOF, expected * "
                      "more bytes); copy or download it again, or " + ADVICE,  # * : a count from torch
        "empty": "weights file '{p}' is empty; " + ADVICE,
        "nan": "weights file '{p}': tensor 'conv1.weight' holds 0 NaN and 1 infinite values of 432 (and 1 other "
               "tensors); these weights cannot give an explanation: train or download them again",
    }
    for name, message in expected.items():
        with pytest.raises(InputError) as info:
            read_state_dict(files[name])
        text = str(info.value)
        head, _, tail = message.format(p=files[name]).partition("*")
        assert text.startswith(head) and text.endswith(tail) and (tail or text == head), name
        assert "weights_only" not in text and "\x1b" not in text and "Errno" not in text


def test_checkpoints_are_unpacked_and_give_the_same_heatmaps(registry, capsys, tmp_path, files):
    heatmaps = []
    for name in ("legacy", "model_key", "state_dict_key"):
        out = tmp_path / name
        status, _, err = run(capsys, str(CIRCLE0), "--demo", "--weights", str(files[name]), "--out", str(out),
                             "--save-relevance")
        assert (status, err) == (0, "")
        heatmaps.append(np.load(out / "relevance" / "00_circle_0.npy"))
    reference = zplug.explain(load_model(), torch.from_numpy(_pixels())).relevance
    for relevance in heatmaps:
        np.testing.assert_allclose(relevance, reference[0].numpy(), rtol=0, atol=1e-6)
    assert read_state_dict(files["model_key"])[1] == "model"
    assert read_state_dict(files["state_dict_key"])[1] == "state_dict"


def _pixels() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(CIRCLE0).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] / 255


def test_weights_for_another_shape(registry, capsys, tmp_path):
    state = load_model().state_dict()
    state["fc2.weight"] = torch.zeros(7, 32)
    torch.save(state, tmp_path / "seven.pt")
    status, _, err = run(capsys, str(CIRCLE0), "--demo", "--weights", str(tmp_path / "seven.pt"), "--out",
                         str(tmp_path / "out"))
    assert (status, err) == (2, (
        f"zplug: error: weights '{tmp_path / 'seven.pt'}' do not fit model 'demo': 1 of another shape ('fc2.weight' "
        "is (7, 32) in the file but (4, 32) in the model); give the weights of this architecture, or the --model they "
        "were trained for\n"))
    wrapped = {f"module.{k}": v for k, v in load_model().state_dict().items()}
    torch.save(wrapped, tmp_path / "parallel.pt")
    status, _, err = run(capsys, str(CIRCLE0), "--demo", "--weights", str(tmp_path / "parallel.pt"), "--out",
                         str(tmp_path / "out"))
    assert err.endswith("every key starts with 'module.' (saved from DataParallel): save model.module.state_dict(); "
                        "give the weights of this architecture, or the --model they were trained for\n")


def test_first_sentence():
    assert first_sentence("Weights only load failed. This file can \x1b[1mstill\x1b[0m be loaded.") == \
        "Weights only load failed"
    assert first_sentence("no full stop here") == "no full stop here"
    assert first_sentence("a\n\tb. c") == "a b"


def test_factory_from_the_current_folder_with_the_console_script(tmp_path):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text("from zplug.demo.model import load_model\n\n\ndef build():\n"
                                     "    return load_model()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZPLUG_")}
    env.update({"ZPLUG_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"})
    script = Path(sys.executable).parent / "zplug"
    result = subprocess.run([str(script), "explain", str(CIRCLE0), "--model", "mypkg.nets:build", "--out", "out"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[1] == "model: mypkg.nets:build (demo model convention), eval mode"
    from zplug.cli._imports import import_from_cwd

    before = list(sys.path)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert import_from_cwd("mypkg.nets").build is not None
    finally:
        os.chdir(cwd)
        sys.modules.pop("mypkg.nets", None)
        sys.modules.pop("mypkg", None)
    assert sys.path == before
