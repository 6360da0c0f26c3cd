"""``zplug explain``: as a user runs it (the console script, in a subprocess) and in-process via ``main``.

In-process runs use the ``registry`` fixture (built-ins only) and compare the written relevance
with ``zplug.explain`` on the same images, so every input form and attributor is checked for
what it computes, not only for files appearing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zplug
from zplug.cli import main
from zplug.cli._models import Convention, convention_of, with_options
from zplug.cli._progress import ProgressBar
from zplug.demo.data import CLASSES
from zplug.demo.model import load_model
from zplug.demo.samples import samples_dir
from zplug.errors import ModelMismatchError
from zplug.inputs import Preprocess, class_indices

ZPLUG = Path(sys.executable).parent / "zplug"
SAMPLES = samples_dir()
SAMPLE_NAMES = [f"{name}_{i}" for name in CLASSES for i in range(3)]  # demo samples in class order


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ZPLUG_")}
    return {**clean, "OMP_NUM_THREADS": "1", "ZPLUG_DISABLE_PLUGIN_AUTOLOAD": "1"}


def zplug_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(ZPLUG), *args], capture_output=True, text=True, env=env(), cwd=cwd, timeout=120)


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["explain", *args])
    out, err = capsys.readouterr()
    return status, out, err


def pixels(path: Path) -> np.ndarray:
    # contiguous, as the command's inputs: SmoothGrad's noise (randn_like) follows the memory layout
    return np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)) / 255


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 round-off (other thread counts or batch sizes reorder sums)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


def reference(paths, target=None, *, seed: int | None = None, **kwargs) -> np.ndarray:
    """The relevance ``zplug.explain`` gives the demo model for these image files (noise seeded with ``seed``)."""
    x = torch.from_numpy(np.stack([pixels(p) for p in paths]))
    model = load_model()  # before seeding: building the model (and resolving) may draw random numbers
    if seed is not None:
        mapping = zplug.resolve(model, kwargs.pop("preset"))
        torch.manual_seed(seed)
        return zplug.explain(model, x, target, mapping=mapping, **kwargs).relevance.numpy()
    return zplug.explain(model, x, target, **kwargs).relevance.numpy()


@pytest.fixture
def tree(tmp_path) -> Path:
    """An ImageFolder tree with two of the demo's classes, in reverse alphabetical class order."""
    root = tmp_path / "tree"
    for name in ("square", "cross"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            shutil.copy(SAMPLES / name / f"{name}_{i}.png", root / name / f"{name}_{i}.png")
    (root / "notes.txt").write_text("not an image\n")
    return root


# -- as a user runs it ---------------------------------------------------------------------------
def test_demo_without_inputs_writes_heatmaps_sheet_inputs_and_relevance(tmp_path):
    result = zplug_cli("explain", "--demo", "--preset", "epsilon_plus_flat", "--out", "out", "--save-inputs",
                       "--save-relevance", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[:6] == [
        "explained 12 inputs, target pred",
        "model: demo (demo model convention), eval mode",
        "method: preset epsilon_plus_flat, attributor gradient()",
        "preprocessing: resize 32, crop 32",
        "accuracy: 12/12 = 100.0% (labels: ImageFolder sub-folders, indexed by class names)",
        "heatmaps: out/heatmaps/ (12 files)",
    ]
    assert lines[6:9] == [
        "inputs: out/inputs/",
        "relevance: out/relevance/ (.npy, float32, shape of the input)",
        "contact sheet: out/contact_sheet.png",
    ]
    out = tmp_path / "out"
    names = [f"{i:02d}_{name}" for i, name in enumerate(SAMPLE_NAMES)]
    assert sorted(p.stem for p in (out / "heatmaps").iterdir()) == names
    files = [SAMPLES / name.rsplit("_", 1)[0] / f"{name}.png" for name in SAMPLE_NAMES]
    relevance = np.stack([np.load(out / "relevance" / f"{n}.npy") for n in names])
    assert_close(relevance, reference(files, preset="epsilon_plus_flat"))
    for name, file in zip(names, files):  # the saved inputs are the sample pixels, exactly
        assert np.array_equal(np.asarray(Image.open(out / "inputs" / f"{name}.png")), np.asarray(Image.open(file)))
        heatmap = Image.open(out / "heatmaps" / f"{name}.png")
        assert (heatmap.mode, heatmap.size) == ("P", (32, 32))
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.mode == "RGB" and sheet.width > 4 * 2 * 128 and sheet.height > 3 * 128


def test_errors_are_one_line_with_exit_status_2(tmp_path):
    result = zplug_cli("explain", "--demo", "missing.png", cwd=tmp_path)
    message = "zplug: error: input 'missing.png' does not exist\n"
    assert (result.returncode, result.stdout, result.stderr) == (2, "", message)


# -- gradient form ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "preset"), [("demo_vit", "cp_lrp"), ("demo", "epsilon_plus")])
def test_gradient_form_gives_the_relevance_of_relevance_form(registry, capsys, tmp_path, model, preset):
    file = SAMPLES / "circle" / "circle_0.png"
    for form in ("relevance", "gradient"):
        status, out, err = run(capsys, str(file), "--model", model, "--preset", preset, "--form", form,
                               "--out", str(tmp_path / form), "--save-relevance", "--sheet-limit", "0")
        assert (status, err) == (0, "")
    found = np.load(tmp_path / "gradient" / "relevance" / "00_circle_0.npy")
    assert_close(found, np.load(tmp_path / "relevance" / "relevance" / "00_circle_0.npy"))


def test_gradient_form_names_a_rule_without_one(registry, capsys, tmp_path):
    file = SAMPLES / "circle" / "circle_0.png"
    status, out, err = run(capsys, str(file), "--demo", "--preset", "epsilon_plus_flat", "--form", "gradient",
                           "--out", str(tmp_path / "out"))
    assert status == 2
    assert err.startswith("zplug: error: gradient form: rule 'flat' on layer ")
    assert err.endswith("has no gradient form; apply the mapping in relevance form\n")


# -- input forms ---------------------------------------------------------------------------------
def test_single_file_is_unlabelled(registry, capsys, tmp_path):
    file = SAMPLES / "triangle" / "triangle_1.png"
    status, out, err = run(capsys, str(file), "--demo", "--preset", "epsilon_plus", "--out", str(tmp_path),
                           "--save-relevance", "--sheet-limit", "0")
    assert (status, err) == (0, "")
    assert "accuracy" not in out and "contact sheet" not in out
    assert sorted(p.name for p in tmp_path.rglob("*.*")) == ["00_triangle_1.npy", "00_triangle_1.png"]
    assert_close(np.load(tmp_path / "relevance" / "00_triangle_1.npy")[None], reference([file], preset="epsilon_plus"))


def test_flat_folder_takes_image_files_in_sorted_order(registry, capsys, tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    for name in ("b", "a"):
        shutil.copy(SAMPLES / "cross" / "cross_0.png", folder / f"{name}.PNG")
    (folder / "readme.md").write_text("skip me\n")
    status, out, _ = run(capsys, str(folder), "--demo", "--out", str(tmp_path / "out"), "-v")
    assert status == 0
    assert sorted(p.name for p in (tmp_path / "out" / "heatmaps").iterdir()) == ["00_a.png", "01_b.png"]
    assert f"   0  {folder / 'a.PNG'}  label -  pred cross" in out


def test_imagefolder_tree_labels_by_class_names(registry, capsys, tree, tmp_path):
    status, out, _ = run(capsys, str(tree), "--demo", "--target", "label", "--out", str(tmp_path / "out"),
                         "--save-relevance", "--name-format", "{label}/{stem}")
    assert status == 0
    assert "accuracy: 4/4 = 100.0% (labels: ImageFolder sub-folders, indexed by class names)" in out
    written = sorted(str(p.relative_to(tmp_path / "out" / "relevance")) for p in tmp_path.rglob("*.npy"))
    assert written == ["cross/cross_0.npy", "cross/cross_1.npy", "square/square_0.npy", "square/square_1.npy"]
    # square is class 1 and cross class 3 (the model's order, not the folders' sorted order)
    files = [tree / "square" / "square_0.png", tree / "cross" / "cross_1.png"]
    relevance = [np.load(tmp_path / "out" / "relevance" / f"{n}.npy") for n in ("square/square_0", "cross/cross_1")]
    assert_close(np.stack(relevance), reference(files, target=[1, 3]))


def test_imagefolder_tree_with_other_names_uses_sorted_folder_order(registry, capsys, tmp_path):
    root = tmp_path / "tree"
    for folder, source in (("b_second", "circle_0"), ("a_first", "cross_0")):
        (root / folder).mkdir(parents=True)
        shutil.copy(SAMPLES / source.split("_")[0] / f"{source}.png", root / folder / "x.png")
    assert class_indices(["b_second", "a_first"], CLASSES) == ({"a_first": 0, "b_second": 1}, "sorted folders")
    status, out, _ = run(capsys, str(root), "--demo", "--out", str(tmp_path / "out"), "-v")
    assert status == 0
    assert "accuracy: 0/2 = 0.0% (labels: ImageFolder sub-folders, indexed by sorted folders)" in out
    assert out.splitlines()[0].split() == ["0", str(root / "a_first" / "x.png"), "label", "a_first", "pred", "cross",
                                           "relevance", "sum", out.split()[8]]


# -- every attributor, targets, presets ----------------------------------------------------------
ATTRIBUTORS = [
    ("gradient", [], {}),
    ("smoothgrad", ["--param", "n_iter=3", "--param", "noise_level=0.2"], {"n_iter": 3, "noise_level": 0.2}),
    ("integrated_gradients", ["--attributor-param", "n_iter=4"], {"n_iter": 4}),
    ("occlusion", ["--param", "window=8", "--param", "stride=4"], {"window": 8, "stride": 4}),
]


@pytest.mark.parametrize(("attributor", "options", "params"), ATTRIBUTORS, ids=[a[0] for a in ATTRIBUTORS])
def test_every_attributor_matches_zplug_explain(registry, capsys, tmp_path, attributor, options, params):
    status, out, _ = run(capsys, str(SAMPLES / "circle"), str(SAMPLES / "square" / "square_2.png"), "--demo",
                         "--preset", "epsilon_plus", "--attributor", attributor, *options, "--batch-size", "2",
                         "--seed", "5", "--target", "2", "--out", str(tmp_path), "--save-relevance")
    assert status == 0
    names = ["00_circle_0", "01_circle_1", "02_circle_2", "03_square_2"]
    relevance = np.stack([np.load(tmp_path / "relevance" / f"{n}.npy") for n in names])
    files = [SAMPLES / "circle" / f"circle_{i}.png" for i in range(3)] + [SAMPLES / "square" / "square_2.png"]
    expected = []
    for batch, start in enumerate((0, 2)):  # batch b is seeded with seed + b
        expected.append(reference(files[start : start + 2], target=2, seed=5 + batch, preset="epsilon_plus",
                                  attributor=attributor, **params))
    assert_close(relevance, np.concatenate(expected))
    assert np.abs(relevance).sum() > 0
    assert f"method: preset epsilon_plus{' (unused' if attributor == 'occlusion' else ','}" in out


def test_epsilon_gamma_box_gets_the_input_bounds(registry, capsys, tmp_path):
    file = SAMPLES / "cross" / "cross_2.png"
    status, _, _ = run(capsys, str(file), "--demo", "--preset", "epsilon_gamma_box", "--param", "gamma=0.5",
                       "--out", str(tmp_path), "--save-relevance")
    assert status == 0
    assert_close(np.load(tmp_path / "relevance" / "00_cross_2.npy")[None],
                 reference([file], preset="epsilon_gamma_box", low=0.0, high=1.0, gamma=0.5))


def test_model_by_registry_name_and_by_factory_equal_demo(registry, capsys, tmp_path):
    file = str(SAMPLES / "square" / "square_0.png")
    for option, out in (("--demo", "a"), ("--model=demo", "b"), ("--model=zplug.demo.model:load_model", "c")):
        assert run(capsys, file, option, "--preset", "epsilon_plus", "--out", str(tmp_path / out))[0] == 0
    a, b, c = (Image.open(tmp_path / d / "heatmaps" / "00_square_0.png") for d in "abc")
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(a), np.asarray(c))


def test_weights_file(registry, capsys, tmp_path):
    model = load_model()
    with torch.no_grad():
        model.fc2.weight.neg_()
        model.fc2.bias.neg_()
    torch.save(model.state_dict(), tmp_path / "flipped.pt")
    status, out, _ = run(capsys, str(SAMPLES / "circle"), "--demo", "--weights", str(tmp_path / "flipped.pt"),
                         "--out", str(tmp_path / "out"), "-v")
    assert status == 0
    assert "pred circle" not in out  # the negated classifier never picks the true class here


def test_ledger_and_progress(registry, capsys, tmp_path):
    status, out, err = run(capsys, str(SAMPLES / "triangle"), "--demo", "--preset", "epsilon_plus", "--ledger",
                           "--progress", "--out", str(tmp_path))
    assert status == 0
    assert out.startswith("conservation ledger, inputs 0-2:\nlayer ")
    assert "\noutput 3 = input " in out  # one-hot start: 1 per sample
    assert err.startswith("[" + "#" * 30 + "] 3/3 inputs 100%") and err.count("\n") == 1


def test_progress_bar_on_a_terminal_redraws_one_line():
    class Terminal(list):
        def write(self, text):
            self.append(text)

        def flush(self):
            pass

        def isatty(self):
            return True

    stream = Terminal()
    bar = ProgressBar(4, stream=stream, delay=0.0, interval=0.0)
    for _ in range(4):
        bar.update()
    bar.close()
    assert [s[:1] for s in stream] == ["\r"] * 4 + ["\n"]
    assert stream[-2].startswith("\r[" + "#" * 30 + "] 4/4 inputs 100%")
    assert stream[1].startswith("\r[" + "#" * 15 + "-" * 15 + "] 2/4 inputs  50%")


# -- conventions ---------------------------------------------------------------------------------
def test_input_conventions(registry):
    class Zoo(torch.nn.Module):
        pass

    class Plugin:
        @staticmethod
        @zplug.hookimpl
        def zplug_input_convention(model):
            if isinstance(model, Zoo):
                return {"resize": 40, "crop": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "source": "zoo convention"}
            return None

    assert convention_of(Zoo(), registry) == Convention(preprocess=Preprocess(), source="default")
    registry.register(Plugin, "zoo")
    convention = convention_of(Zoo(), registry)
    assert convention.preprocess == Preprocess(resize=40, crop=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert convention.source == "zoo convention (plugin 'zoo')" and convention.classes is None
    low, high = convention.preprocess.bounds()
    torch.testing.assert_close(low.flatten(), torch.full((3,), -2.0))
    torch.testing.assert_close(high.flatten(), torch.full((3,), 2.0))
    declared = Zoo()
    declared.zplug_input = {"resize": 64, "classes": ["a", "b"], "mean": [0.5], "std": [0.5]}
    custom = with_options(convention_of(declared, registry), crop=48, resize=0)  # the model's own declaration wins
    assert custom.preprocess == Preprocess(crop=48, mean=(0.5,), std=(0.5,)) and custom.classes == ("a", "b")
    assert convention_of(torch.nn.Linear(2, 2), registry).preprocess == Preprocess()


def test_a_plugin_convention_with_unknown_keys_is_refused(registry):
    class Plugin:
        @staticmethod
        @zplug.hookimpl
        def zplug_input_convention(model):
            return {"resize": 40, "size": 32}

    registry.register(Plugin, "zoo")
    with pytest.raises(ModelMismatchError) as info:
        convention_of(torch.nn.Linear(2, 2), registry)
    assert str(info.value) == (
        "plugin 'zoo': the input convention of Linear has unknown keys ['size'] "
        "(known: classes, crop, mean, resize, std)"
    )


def test_resize_and_crop_like_torchvision(tmp_path):
    Image.fromarray(np.arange(60 * 40 * 3, dtype=np.uint8).reshape(40, 60, 3)).save(tmp_path / "wide.png")
    image = Preprocess(resize=20, crop=16).load(tmp_path / "wide.png")
    assert image.shape == (3, 16, 16) and image.dtype == np.float32
    expected = Image.open(tmp_path / "wide.png").convert("RGB").resize((30, 20), Image.Resampling.BILINEAR)
    expected = np.asarray(expected.crop((7, 2, 23, 18)), dtype=np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_array_equal(image, expected)


# -- errors --------------------------------------------------------------------------------------
def bad_preset(tmp_path) -> str:
    path = tmp_path / "mine.toml"
    path.write_text('schema = 1\n[[name_map]]\nnames = ["conv9"]\nrule = "pass"\n')
    return str(path)


ERRORS = [
    (["nope.png", "--demo"], "input 'nope.png' does not exist"),
    (["{tmp}/text.png", "--demo"],
     "cannot read image '{tmp}/text.png': not a PNG, JPEG, BMP, GIF, WebP, TIFF or PPM/PGM/PBM image"),
    (["{tmp}/empty", "--demo"], "folder '{tmp}/empty' holds no images (looked for .bmp, .gif, .jpeg, .jpg, .pgm, "
     ".png, .ppm, .tif, .tiff, .webp, and in its sub-folders)"),
    (["--demo", "--preset", "epsilon_plu"], "unknown preset 'epsilon_plu' (did you mean 'epsilon_plus'? known: "
     "attnlrp, attnlrp_gamma, beta_smooth, cp_lrp, cp_lrp_gamma, deconvnet, epsilon_alpha2_beta1, "
     "epsilon_alpha2_beta1_flat, epsilon_gamma_box, epsilon_plus, "
     "epsilon_plus_flat, excitation_backprop, guided_backprop)"),
    (["--demo", "--preset", "{bad_preset}"], "{bad_preset}: name_map[0].names[0]: the model DemoNet has no module "
     "'conv9' (did you mean 'conv5'?); run `zplug mapping` without this entry to list the module names"),
    (["--demo", "--preset", "epsilon_plus", "--param", "gama=1"],
     "unknown parameter 'gama' for attributor 'gradient' or the preset (valid: epsilon, stabilizer, zero_params)"),
    (["--demo", "--attributor", "smoothgrad", "--param", "n_iter=0"],
     "attributor 'smoothgrad': parameter 'n_iter' must be an integer >= 1 (got 0)"),
    (["--demo", "--attributor", "occlusion", "--ledger"],
     "--ledger accounts for one backward pass: use --attributor gradient (got 'occlusion')"),
    (["{tmp}/text.png", "--demo", "--target", "label"],
     "--target label needs labelled inputs (ImageFolder trees); '{tmp}/text.png' has no label"),
    (["--demo", "--target", "7"], "--target 7: a class index is 0 to 3"),
    (["--demo", "--target", "hexagon"], "--target 'hexagon': use label, pred, a class index, or a class name "
     "(circle, square, triangle, cross)"),
    (["--demo", "--name-format", "{x}"], "--name-format '{x}': unknown field {x} (fields: sample, stem, label, pred)"),
    (["--demo", "--name-format", "{label}"], "--name-format '{label}' gives '{samples}/circle/circle_0.png' and "
     "'{samples}/circle/circle_1.png' the same name 'circle'; add {sample} to it"),
    (["--demo", "--weights", "{tmp}/none.pt"], "weights file '{tmp}/none.pt' does not exist"),
    (["--demo", "--weights", "{tmp}/text.png"], "weights file '{tmp}/text.png' was not written by torch.save; save "
     "the weights with torch.save(model.state_dict(), FILE)"),
    (["--demo", "--weights", "{tmp}/linear.pt"], "weights '{tmp}/linear.pt' do not fit model 'demo': 34 missing "
     "entries (conv1.weight, bn1.weight, bn1.bias and 31 more), 2 unexpected entries (weight, bias); give the weights "
     "of this architecture, or the --model they were trained for"),
    (["--demo", "--model", "demo"], "give either --demo or --model, not both"),
    (["x.png"], "no model: give --model NAME (a registered model or package.module:factory) or --demo"),
    (["--model", "demo"], "no inputs: give image files, folders or ImageFolder trees (or --demo for its samples)"),
    (["--demo", "--mean", "0.5"], "--mean and --std go together: give both, e.g. --mean 0.5 --std 0.25"),
    (["--demo", "--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=[m[:40] for _, m in ERRORS])
def test_error_messages(registry, capsys, tmp_path, args, message):
    (tmp_path / "text.png").write_text("not a png\n")
    (tmp_path / "empty").mkdir()
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.pt")
    fill = {"tmp": str(tmp_path), "bad_preset": bad_preset(tmp_path), "samples": str(SAMPLES)}
    args = [a.format(**fill) if "{tmp}" in a or "{bad_preset}" in a else a for a in args]
    message = message.replace("{tmp}", fill["tmp"]).replace("{bad_preset}", fill["bad_preset"])
    message = message.replace("{samples}", fill["samples"])
    status, out, err = run(capsys, *args, "--out", str(tmp_path / "out"))
    assert (status, out) == (2, "")
    assert err.startswith(f"zplug: error: {message}") and err.count("\n") == 1
    if not message.endswith(": "):
        assert err == f"zplug: error: {message}\n"
    assert not (tmp_path / "out").exists()
