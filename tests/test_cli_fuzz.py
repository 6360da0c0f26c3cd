"""Properties of ``zplug explain`` under random options, file trees and name formats (hypothesis, bounded).

Whatever the options, inputs and the state of ``--out``: the exit status is 0 or 2, nothing is
printed as a traceback, no file outside ``--out`` changes, nothing that was in ``--out`` changes
without ``--overwrite``, and the model is left as it was built.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import zplug.cli._models as models
from zplug.cli import main
from zplug.demo.model import load_model

TOKENS = ["{sample}", "{sample:02d}", "{stem}", "{label}", "{pred}", "/", "..", "../", "/abs", "x", ".", "{", "}",
          "{bad}", "{stem.upper}", "{sample:s}", "_", "{stem}/", "{stem:>300}"]
FOLDERS = ["circle", "circle", "cross", "cross", "circle/deep", ".hidden", "__MACOSX", "", "circle"]
NAMES = ["x.png", "y.png", "x.png", "y.png", "._x.png", "z.jpg", "notes.txt", "w.PNG", "t.tif"]
KINDS = ["rgb"] * 6 + ["grey16", "rgba", "palette", "float", "broken", "text", "empty"]

sizes = st.sampled_from([24, 32, 40, 8, 1])
entries = st.tuples(st.sampled_from(FOLDERS), st.sampled_from(NAMES), st.sampled_from(KINDS), sizes, sizes)
#: One image in a class folder, and up to four other entries.
trees = st.tuples(st.sampled_from(FOLDERS[:5]), st.just("a.png"), st.just("rgb"), sizes, sizes).flatmap(
    lambda image: st.lists(entries, max_size=4).map(lambda more: [image, *more]))
#: Options with values that work (or fail for a reason of the inputs, such as --target label).
options = st.fixed_dictionaries({
    "--resize": st.sampled_from(["32", "16", "0"]),
    "--crop": st.sampled_from([None, "0", "8"]),
    "--batch-size": st.sampled_from([None, "1", "3"]),
    "--name-format": st.sampled_from([None, "{stem}", "{label}/{stem}", "{pred}/{sample}_{stem}", "x{sample:03d}"]),
    "--sheet-limit": st.sampled_from([None, "0", "1"]),
    "--layout": st.sampled_from([None, "auto", "imagefolder", "flat"]),
    "--target": st.sampled_from([None, "pred", "label", "0", "circle"]),
    "--preset": st.sampled_from([None, "epsilon_plus"]),
})
#: Values that must give a one-line error (or do no harm); in about one example of four, some replace the above.
wrong_values = st.lists(st.one_of(
    st.tuples(st.just("--name-format"), st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4).map("".join)),
    st.tuples(st.sampled_from(["--resize", "--crop"]), st.sampled_from(["-5", "1", "64", "100000", "abc"])),
    st.tuples(st.just("--batch-size"), st.sampled_from(["0", "-1"])),
    st.tuples(st.just("--max-pixels"), st.sampled_from(["0", "1", "900", "5000"])),
    st.tuples(st.just("--target"), st.sampled_from(["7", "-1", "hexagon"])),
    st.tuples(st.just("--sheet-limit"), st.sampled_from(["-1", "100000"])),
), min_size=1, max_size=2)
mistakes = st.integers(0, 3).flatmap(lambda i: wrong_values if i == 3 else st.just([]))
flags = st.sets(st.sampled_from(["--save-inputs", "--save-relevance", "--overwrite", "--skip-bad"]))
STATES = ["missing"] * 6 + ["empty", "file", "link-file", "link-folder", "out-is-file", "missing"]
before_run = st.integers(0, len(STATES) - 1).map(STATES.__getitem__)
class_names = st.sampled_from([None, None, 4, 2])


def make(path: Path, kind: str, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(width * 41 + height)
    if kind in ("broken", "text", "empty"):
        path.write_bytes({"broken": b"\x89PNG\r\n\x1a\nbroken", "text": b"words\n", "empty": b""}[kind])
        return
    fmt = "TIFF" if path.suffix == ".tif" else "JPEG" if path.suffix == ".jpg" else "PNG"
    if kind == "grey16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif kind == "float":
        image = Image.fromarray(rng.random((height, width), dtype=np.float32))
        fmt = "TIFF"
    elif kind == "palette":
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert("P")
    else:
        channels = 4 if kind == "rgba" else 3
        image = Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8))
    if fmt == "JPEG":
        image = image.convert("RGB")
    image.save(path, format=fmt)


def snapshot(root: Path, skip: Path | None = None) -> dict[str, object]:
    """Every entry below ``root`` (links not followed), except below ``skip``."""
    found: dict[str, object] = {}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(folder, name)
            if skip is not None and (path == skip or skip in path.parents):
                continue
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = ("folder",)
            else:
                found[key] = ("file", path.read_bytes())
    return found


def untouched(model) -> bool:
    """The built model still holds the bundled weights, in eval mode, without hooks or patched attributes."""
    reference = load_model().state_dict()
    same = all(torch.equal(value, reference[key]) for key, value in model.state_dict().items())
    clean = all(not m.training and not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
                and "forward" not in vars(m) for m in model.modules())
    return same and clean


@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tree=trees, chosen=options, wrong=mistakes, switches=flags, out_state=before_run, names=class_names)
def test_explain_keeps_its_promises(registry, tree, chosen, wrong, switches, out_state, names):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for folder, name, kind, width, height in tree:
            make(root / "data" / folder / name, kind, width, height)
        (root / "data").mkdir(exist_ok=True)
        (root / "elsewhere").mkdir()
        (root / "elsewhere" / "precious.txt").write_text("keep\n")
        out = root / "out"
        if out_state == "out-is-file":
            out.write_text("a file\n")
        elif out_state != "missing":
            (out / "heatmaps").mkdir(parents=True)
            if out_state == "file":
                (out / "heatmaps" / "00_x.png").write_bytes(b"old")
            elif out_state == "link-file":
                (out / "heatmaps" / "00_x.png").symlink_to(root / "elsewhere" / "precious.txt")
            elif out_state == "link-folder":
                (out / "heatmaps").rmdir()
                (out / "heatmaps").symlink_to(root / "elsewhere", target_is_directory=True)
        argv = ["explain", str(root / "data"), "--demo", "--out", str(out), *sorted(switches)]
        for option, value in {**chosen, **dict(wrong)}.items():
            if value is not None:
                argv += [option, value]
        if names is not None:
            (root / "names.txt").write_text("\n".join(["circle", "square", "triangle", "cross"][:names]) + "\n")
            argv += ["--class-names", str(root / "names.txt")]
        outside, inside = snapshot(root, skip=out), snapshot(out) if out.is_dir() else None
        built = []
        original = models.build_model

        def build(*args, **kwargs):
            built.append(original(*args, **kwargs))
            return built[-1]

        stdout, stderr = io.StringIO(), io.StringIO()
        with mock.patch.object(models, "build_model", build), contextlib.redirect_stdout(stdout), \
                contextlib.redirect_stderr(stderr):
            try:
                status = main(argv)
            except SystemExit as exc:  # argparse: a value of the wrong type
                status = exc.code
        err = stderr.getvalue()
        assert status in (0, 2), err
        assert "Traceback" not in err
        # our errors and notes, or argparse's usage for a value of the wrong type
        assert all(line.startswith(("zplug: ", "zplug explain: error: argument ", "usage: ", " ")) or not line
                   for line in err.splitlines()), err
        assert snapshot(root, skip=out) == outside  # nothing outside --out changed (also through links)
        assert not Path("/abs").exists()
        if inside is not None and "--overwrite" not in switches:
            now = snapshot(out)
            assert {key: now.get(key) for key in inside} == inside
        if built:
            assert untouched(built[0].module)
        if status == 0 and out_state in ("missing", "empty"):
            count = int(stdout.getvalue().split("heatmaps: ")[1].split("(")[1].split(" ")[0])
            assert len([p for p in (out / "heatmaps").rglob("*") if p.is_file()]) == count
            assert not [p for p in out.rglob(".zplug-*")]  # no temporary files left
