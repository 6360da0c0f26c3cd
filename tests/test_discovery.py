"""Input discovery: ImageFolder trees as torchvision reads them, plain folders, mixed folders, skipped files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from zplug.cli import main
from zplug.demo.samples import samples_dir
from zplug.discovery import InputError, discover

SAMPLES = samples_dir()


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["explain", *args])
    out, err = capsys.readouterr()
    return status, out, err


def put(path: Path, sample: str = "circle_0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLES / sample.split("_")[0] / f"{sample}.png", path)
    return path


@pytest.fixture
def nested(tmp_path) -> Path:
    """Class folders with images at several depths, hidden entries and other files."""
    root = tmp_path / "tree"
    put(root / "b_dog" / "z.png", "cross_0")
    put(root / "b_dog" / "deep" / "er" / "a.png", "cross_1")
    put(root / "b_dog" / "a b" / "c.png", "cross_2")
    put(root / "a_cat" / "sub" / "deep.png", "circle_1")
    put(root / "a_cat" / "x.jpg.png", "circle_2")
    (root / "empty_class").mkdir()
    (root / "a_cat" / "._x.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "a_cat" / "notes.txt").write_text("not an image\n")
    (root / ".ipynb_checkpoints").mkdir()
    put(root / ".ipynb_checkpoints" / "copy.png")
    return root


def test_imagefolder_tree_matches_torchvision(nested):
    """Nested files are included and labelled with their class folder, in torchvision's order."""
    datasets = pytest.importorskip("torchvision.datasets")
    shutil.rmtree(nested / ".ipynb_checkpoints")  # torchvision would make it a class (zplug skips hidden folders)
    (nested / "a_cat" / "._x.png").unlink()  # and would read this file
    reference = datasets.ImageFolder(str(nested), allow_empty=True)
    found = discover([nested]).samples()
    assert [(str(s.path), s.label) for s in found] == [(path, label) for path, label in reference.samples]
    assert [s.label_name for s in found] == [reference.classes[label] for _, label in reference.samples]


def test_hidden_and_other_files_are_skipped_and_counted(nested):
    discovery = discover([nested])
    # folder by folder, sorted by path (torchvision's order), names sorted inside each
    assert [s.path.name for s in discovery.samples()] == ["x.jpg.png", "deep.png", "z.png", "c.png", "a.png"]
    assert discovery.skipped.describe() == (
        f"2 hidden entries (names starting with '.', e.g. '{nested / '.ipynb_checkpoints'}'), 1 file without an image "
        f"extension (e.g. '{nested / 'a_cat' / 'notes.txt'}')"
    )


def test_appledouble_files_do_not_stop_a_run(registry, capsys, tmp_path):
    root = tmp_path / "data"
    put(root / "circle" / "a.png")
    (root / "circle" / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / "__MACOSX" / "circle").mkdir(parents=True)
    (root / "__MACOSX" / "circle" / "._a.png").write_bytes(b"\x00\x05\x16\x07")
    status, out, err = run(capsys, str(root), "--demo", "--out", str(tmp_path / "out"))
    assert (status, err) == (0, "")
    assert out.splitlines()[0] == "explained 1 input, target pred"
    assert (f"skipped: 2 hidden entries (names starting with '.', e.g. '{root / '__MACOSX'}')") in out


def test_a_mixed_folder_is_refused_until_the_layout_is_chosen(registry, capsys, tmp_path):
    root = tmp_path / "mixed"
    put(root / "top.png", "circle_0")
    put(root / "sub" / "inner.png", "cross_0")
    status, _, err = run(capsys, str(root), "--demo", "--out", str(tmp_path / "out"))
    assert status == 2
    assert err == (
        f"zplug: error: folder '{root}' holds images ('{root / 'top.png'}') and sub-folders with images "
        f"('{root / 'sub'}'): give --layout imagefolder to read the sub-folders as classes (skipping the images "
        "beside them) or --layout flat to read every image, unlabelled\n"
    )
    status, out, _ = run(capsys, str(root), "--demo", "--out", str(tmp_path / "flat"), "--layout", "flat", "-v")
    assert status == 0
    listed = [line.split()[1] for line in out.splitlines()[:2]]
    assert listed == [str(root / "top.png"), str(root / "sub" / "inner.png")]
    assert "accuracy" not in out and "skipped" not in out
    status, out, _ = run(capsys, str(root), "--demo", "--out", str(tmp_path / "tree"), "--layout", "imagefolder", "-v")
    assert status == 0
    assert out.splitlines()[0].split()[1:4] == [str(root / "sub" / "inner.png"), "label", "sub"]
    assert f"skipped: 1 image outside the class folders of an ImageFolder tree (e.g. '{root / 'top.png'}')" in out


def test_layout_errors(tmp_path):
    put(tmp_path / "flat" / "a.png")
    with pytest.raises(InputError, match=r"has no sub-folder with images, so it is no ImageFolder tree"):
        discover([tmp_path / "flat"], "imagefolder")
    (tmp_path / "nothing" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match=r"^folder '.*nothing' holds no images \(looked for "):
        discover([tmp_path / "nothing"], "flat")


def test_links_to_folders_are_followed_once(tmp_path):
    root = tmp_path / "data"
    put(root / "cls" / "a.png")
    os.symlink(root / "cls", root / "cls" / "loop", target_is_directory=True)
    assert [s.path for s in discover([root]).samples()] == [root / "cls" / "a.png"]


def test_non_regular_inputs_are_refused_without_reading(registry, capsys, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    status, _, err = run(capsys, "/dev/zero", "--demo", "--out", str(tmp_path / "out"))
    assert (status, err) == (2, "zplug: error: input '/dev/zero' is a character device, not an image file or a "
                                "folder\n")
    status, _, err = run(capsys, str(fifo), "--demo", "--out", str(tmp_path / "out"))
    assert err == f"zplug: error: input '{fifo}' is a named pipe (FIFO), not an image file or a folder\n"
    # inside a folder, a pipe with an image name is an input that cannot be read (opening it would block)
    put(tmp_path / "folder" / "a.png")
    os.mkfifo(tmp_path / "folder" / "b.png")
    status, _, err = run(capsys, str(tmp_path / "folder"), "--demo", "--out", str(tmp_path / "out"))
    assert err == (f"zplug: error: input '{tmp_path / 'folder' / 'b.png'}' is a named pipe (FIFO), not an image "
                   "file; give --skip-bad to explain the other 1 input\n")
    assert not (tmp_path / "out").exists()
