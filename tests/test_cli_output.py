"""``zplug explain`` output: no file replaced without --overwrite, names inside --out, links never followed.

Every case runs the command (in-process through ``main``, or as a user runs it) and checks the
files on disk afterwards: what is in ``--out``, and that nothing outside it changed.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zplug.cli import main
from zplug.cli._output import OutputError, OutputFolder, check_paths, describe_written, ranges
from zplug.demo.samples import samples_dir

SAMPLES = samples_dir()
CIRCLE0 = SAMPLES / "circle" / "circle_0.png"


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["explain", *args])
    out, err = capsys.readouterr()
    return status, out, err


def snapshot(root: Path) -> dict[str, object]:
    """Every entry below ``root``: file bytes, link targets, folders (links not followed)."""
    entries: dict[str, object] = {}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(folder, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                entries[key] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[key] = ("folder",)
            else:
                entries[key] = ("file", path.read_bytes())
    return entries


@pytest.fixture
def four(tmp_path) -> Path:
    """A flat folder of four demo images."""
    folder = tmp_path / "four"
    folder.mkdir()
    for name in ("circle_0", "square_1", "cross_2", "triangle_0"):
        shutil.copy(SAMPLES / name.split("_")[0] / f"{name}.png", folder / f"{name}.png")
    return folder


# -- a second run into the same folder -------------------------------------------------------------
def test_a_second_run_into_a_folder_with_files_is_refused(registry, capsys, tmp_path, four):
    out = tmp_path / "out"
    assert run(capsys, str(four), "--demo", "--out", str(out), "--save-inputs")[0] == 0
    (out / "heatmaps" / "mine.txt").write_text("the user's notes\n")
    before = snapshot(tmp_path)
    status, stdout, err = run(capsys, str(four), "--demo", "--out", str(out), "--name-format", "{stem}")
    assert (status, stdout) == (2, "")
    assert err == (
        f"zplug: error: --out '{out}' is not empty (3 entries, e.g. 'contact_sheet.png'); choose a new folder, or "
        "give --overwrite to replace the files of this run's names there (nothing else is changed)\n"
    )
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_files_of_this_runs_names_and_keeps_the_rest(registry, capsys, tmp_path, four):
    out = tmp_path / "out"
    assert run(capsys, str(four), "--demo", "--out", str(out), "--sheet-limit", "0")[0] == 0
    (out / "heatmaps" / "00_circle_0.png").write_bytes(b"old")
    (out / "mine.txt").write_text("keep me\n")
    status, stdout, _ = run(capsys, str(four), "--demo", "--out", str(out), "--overwrite", "--name-format",
                            "{sample:02d}_{stem}", "--save-relevance", "--sheet-limit", "0")
    assert status == 0
    # 4 heatmaps replaced (one of them held b"old"); mine.txt stays; 4 relevance files are new
    assert f"--overwrite: 4 files replaced; 1 other file in {out}/ from before left as it was" in stdout
    assert (out / "mine.txt").read_text() == "keep me\n"
    assert Image.open(out / "heatmaps" / "00_circle_0.png").mode == "P"
    assert sorted(p.name for p in (out / "relevance").iterdir()) == [
        "00_circle_0.npy", "01_cross_2.npy", "02_square_1.npy", "03_triangle_0.npy"]


def test_a_link_in_the_output_folder_is_replaced_never_written_through(registry, capsys, tmp_path):
    out, target = tmp_path / "out", tmp_path / "precious.txt"
    target.write_text("do not touch\n")
    (out / "heatmaps").mkdir(parents=True)
    (out / "heatmaps" / "00_circle_0.png").symlink_to(target)
    status, _, err = run(capsys, str(CIRCLE0), "--demo", "--out", str(out))
    assert status == 2 and err.startswith(f"zplug: error: --out '{out}' is not empty (1 entry, e.g. 'heatmaps')")
    status, _, _ = run(capsys, str(CIRCLE0), "--demo", "--out", str(out), "--overwrite")
    assert status == 0
    assert target.read_text() == "do not touch\n"
    written = out / "heatmaps" / "00_circle_0.png"
    assert not written.is_symlink() and Image.open(written).mode == "P"


def test_a_linked_folder_in_the_output_folder_is_an_error(registry, capsys, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "heatmaps").symlink_to(elsewhere, target_is_directory=True)
    status, _, err = run(capsys, str(CIRCLE0), "--demo", "--out", str(out), "--overwrite")
    assert status == 2
    assert err == (f"zplug: error: '{out}/heatmaps' is a symbolic link, not a folder; zplug writes no files through "
                   "links or in place of files: remove it or choose another --out\n")
    assert list(elsewhere.iterdir()) == []


# -- names ---------------------------------------------------------------------------------------
NAME_ERRORS = [
    ("../../X_{stem}", "gives '../../X_circle_0' for input '{file}', which has a '.' or '..' part (names stay "
     "inside --out)"),
    ("/abs/{stem}", "gives '/abs/circle_0' for input '{file}', which has a leading '/' (names are paths inside "
     "--out)"),
    ("../{sample:02d}_{stem}", "gives '../00_circle_0' for input '{file}', which has a '.' or '..' part (names "
     "stay inside --out)"),
    ("{stem}/", "gives 'circle_0/' for input '{file}', which has no file name after the last '/' (a name must end "
     "in a file name)"),
    ("a//{stem}", "gives 'a//circle_0' for input '{file}', which has an empty folder name ('//')"),
    ("{label}/{stem}", "gives '/circle_0' for input '{file}', which has a leading '/' (names are paths inside "
     "--out) ({label} is empty: the input has no label)"),
    ("{stem:>300}", "gives '" + " " * 292 + "circle_0' for input '{file}', which has a part of 300 bytes (at most "
     "251, for the extension)"),
    ("{stem.upper}", "field {stem.upper} looks up part of {stem}; use the fields as they are, with a format spec "
     "if needed (e.g. {sample:05d})"),
    ("{stem[0]}", "field {stem[0]} looks up part of {stem}; use the fields as they are, with a format spec if "
     "needed (e.g. {sample:05d})"),
    ("{}", "every field needs a name (fields: sample, stem, label, pred)"),
    ("{sample:s}", "Unknown format code 's' for object of type 'int' (fields: sample, stem, label, pred)"),
    ("{stem", "expected '}' before end of string (fields: sample, stem, label, pred; write {{ and }} for braces)"),
]


@pytest.mark.parametrize(("fmt", "message"), NAME_ERRORS, ids=[f for f, _ in NAME_ERRORS])
def test_names_stay_inside_out_and_end_in_a_file_name(registry, capsys, tmp_path, fmt, message):
    (tmp_path / "out").mkdir()
    before = snapshot(tmp_path)
    status, _, err = run(capsys, str(CIRCLE0), "--demo", "--out", str(tmp_path / "out"), "--name-format", fmt,
                         "--save-inputs")
    assert status == 2
    assert err == f"zplug: error: --name-format {fmt!r}: {message}\n".replace(
        f"{fmt!r}: gives", f"{fmt!r} gives").replace("{file}", str(CIRCLE0))
    assert snapshot(tmp_path) == before


def test_pred_names_that_can_collide_are_refused_before_running(registry, capsys, tmp_path, four):
    status, _, err = run(capsys, str(four), "--demo", "--out", str(tmp_path / "out"), "--name-format", "{pred}")
    assert status == 2
    assert err == (
        f"zplug: error: --name-format '{{pred}}' gives '{four / 'circle_0.png'}' and '{four / 'cross_2.png'}' the same "
        "name 'circle' when both get the same prediction; add {sample} to it\n"
    )
    assert not (tmp_path / "out").exists()
    status, stdout, _ = run(capsys, str(four), "--demo", "--out", str(tmp_path / "out"), "--name-format",
                            "{pred}/{stem}")
    assert status == 0 and "heatmaps: " + str(tmp_path / "out" / "heatmaps") + "/ (4 files)" in stdout
    assert sorted(str(p.relative_to(tmp_path / "out" / "heatmaps")) for p in (tmp_path / "out").rglob("*_*.png")
                  if "heatmaps" in p.parts) == [
        "circle/circle_0.png", "cross/cross_2.png", "square/square_1.png", "triangle/triangle_0.png"]


def test_class_names_that_make_bad_pred_names(registry, capsys, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("circle\nsq/uare\ntriangle\ncross\n")
    status, _, err = run(capsys, str(CIRCLE0), "--demo", "--class-names", str(names), "--out", str(tmp_path / "out"),
                         "--name-format", "{sample}_{pred}")
    assert status == 2
    assert err == (
        "zplug: error: --name-format '{sample}_{pred}' uses {pred}, and class 1 ('sq/uare') gives the name "
        "'0_sq/uare', which has a '/' from the class name; leave {pred} out of --name-format or rename the class\n"
    )


def test_file_and_folder_clashes_between_files_of_a_run():
    with pytest.raises(OutputError, match=r"^two files of this run would be written to 'heatmaps/a.png'; "):
        check_paths(["heatmaps/a.png", "inputs/a.png", "heatmaps/a.png"])
    with pytest.raises(OutputError, match=r"^'heatmaps/a.png' would be both a file and a folder of this run; "
                                          r"change --name-format$"):
        check_paths(["heatmaps/a.png", "heatmaps/a.png/b.png"])
    check_paths(["heatmaps/a.png", "heatmaps/a/b.png", "contact_sheet.png"])


# -- the output folder ---------------------------------------------------------------------------
def test_out_that_is_a_file_or_under_a_file(registry, capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    for out, message in (
        (tmp_path / "file", f"--out '{tmp_path / 'file'}' is a file, not a folder; give a folder (it is created if "
                            "missing)"),
        (tmp_path / "file" / "sub", f"--out '{tmp_path / 'file' / 'sub'}': '{tmp_path / 'file'}' is a file, not a "
                                    "folder"),
        (Path("/proc/zplug-out"), "--out '/proc/zplug-out': cannot create this folder (No such file or directory)"),
    ):
        status, _, err = run(capsys, "--demo", "--out", str(out))
        assert (status, err) == (2, f"zplug: error: {message}\n")


def _no_model(*args, **kwargs):
    raise AssertionError("the model was built before the output folder was checked")


def test_unwritable_out_is_refused_before_the_model_is_loaded(registry, capsys, monkeypatch, tmp_path):
    """sysfs takes no new files, also from root; a folder without write permission (for other users) neither."""
    import zplug.cli._models

    monkeypatch.setattr(zplug.cli._models, "build_model", _no_model)
    refusals = r"\((Permission denied|Operation not permitted|Read-only file system)\)"
    if Path("/sys/fs").is_dir():
        status, _, err = run(capsys, "--demo", "--out", "/sys/fs", "--overwrite")
        assert status == 2 and re.fullmatch(rf"zplug: error: --out '/sys/fs': cannot write in this folder {refusals}\n",
                                            err)
        status, _, err = run(capsys, "--demo", "--out", "/sys/zplug-out/heatmaps")
        assert status == 2 and re.fullmatch(
            rf"zplug: error: --out '/sys/zplug-out/heatmaps': cannot create this folder {refusals}\n", err)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user may write in read-only folders (root)")
        status, _, err = run(capsys, "--demo", "--out", str(locked))
        assert err == f"zplug: error: --out '{locked}': cannot write in this folder (Permission denied)\n"
        status, _, err = run(capsys, "--demo", "--out", str(locked / "new"))
        assert err == f"zplug: error: --out '{locked / 'new'}': cannot create this folder (Permission denied)\n"
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_files_written_before_an_error_are_named(registry, capsys, tmp_path, four, monkeypatch):
    """An input damaged after it was checked: the error says which files exist, and they are complete."""
    import zplug.cli.explain as command

    checked = command.check_shard

    def check_then_damage(plan, ctx):
        result = checked(plan, ctx)
        (four / "square_1.png").write_bytes(b"damaged")  # input 2, in the second batch
        return result

    monkeypatch.setattr(command, "check_shard", check_then_damage)
    out = tmp_path / "out"
    status, stdout, err = run(capsys, str(four), "--demo", "--out", str(out), "--batch-size", "2", "--save-inputs")
    assert (status, stdout) == (2, "")
    assert err == (
        f"zplug: error: cannot read image '{four / 'square_1.png'}': not a PNG, JPEG, BMP, GIF, WebP, TIFF or "
        f"PPM/PGM/PBM image; 4 files were written under '{out}' before it (complete files, of inputs 0-1)\n"
    )
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "heatmaps/00_circle_0.png", "heatmaps/01_cross_2.png", "inputs/00_circle_0.png", "inputs/01_cross_2.png"]
    for path in out.rglob("*.png"):
        Image.open(path).load()  # complete


# -- the writer ----------------------------------------------------------------------------------
def test_writes_are_atomic_and_never_replace_without_overwrite(tmp_path):
    folder = OutputFolder(tmp_path / "out", overwrite=False)
    folder.check()
    folder.write("heatmaps/a.bin", lambda f: f.write(b"first"))

    def broken(file):
        file.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match=r"^cannot write '.*/heatmaps/b.bin': No space left on device$"):
        folder.write("heatmaps/b.bin", broken)
    assert sorted(os.listdir(tmp_path / "out" / "heatmaps")) == ["a.bin"]  # no half file, no temporary file
    with pytest.raises(OutputError, match=r"^this run already wrote '.*/heatmaps/a.bin'; two inputs got the same"):
        folder.write("heatmaps/a.bin", lambda f: f.write(b"second"))
    (tmp_path / "out" / "heatmaps" / "c.bin").write_bytes(b"someone else's")
    with pytest.raises(OutputError, match=r"^'.*/heatmaps/c.bin' appeared while this run was writing; it was left"):
        folder.write("heatmaps/c.bin", lambda f: f.write(b"mine"))
    assert (tmp_path / "out" / "heatmaps" / "c.bin").read_bytes() == b"someone else's"
    assert (tmp_path / "out" / "heatmaps" / "a.bin").read_bytes() == b"first"
    assert folder.written == ["heatmaps/a.bin"]
    folder.close()


def test_describe_written():
    assert ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert describe_written(Path("out"), 1, [3]) == "1 file was written under 'out' before it (complete files, of " \
                                                    "inputs 3)"
    assert describe_written(Path("out"), 0, []) == "no file was written under 'out'"


def test_results_are_the_same_as_before(registry, capsys, tmp_path):
    """Writing through the safe writer gives the files the image functions make."""
    from zplug.image import heatmaps

    status, _, _ = run(capsys, str(CIRCLE0), "--demo", "--out", str(tmp_path / "out"), "--save-relevance")
    assert status == 0
    relevance = np.load(tmp_path / "out" / "relevance" / "00_circle_0.npy")
    expected = heatmaps(relevance[None], "symmetric", "coldnhot", 1.0)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "heatmaps" / "00_circle_0.png")),
                                  np.asarray(expected))


def test_an_interruption_says_what_was_written(registry, capsys, tmp_path, four, monkeypatch):
    import zplug.cli.explain as command

    explain_batch = command.explain_batch

    def interrupted(plan, number, first, batch):
        if number == 1:
            raise KeyboardInterrupt
        return explain_batch(plan, number, first, batch)

    monkeypatch.setattr(command, "explain_batch", interrupted)
    out = tmp_path / "out"
    status, _, err = run(capsys, str(four), "--demo", "--out", str(out), "--batch-size", "2")
    assert status == 130
    assert err.splitlines() == [
        f"zplug: 2 files were written under '{out}' before the interruption (complete files, of inputs 0-1)",
        "zplug: interrupted",
    ]
    assert not list(out.rglob(".zplug-*"))
