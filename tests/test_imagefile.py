"""Reading image files: every Pillow mode to [0, 1] by its range, size limits, damaged files, --skip-bad."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zplug.cli import main
from zplug.demo.samples import samples_dir
from zplug.discovery import InputError
from zplug.imagefile import Limits, read_image
from zplug.inputs import Preprocess

SAMPLES = samples_dir()
CIRCLE0 = SAMPLES / "circle" / "circle_0.png"
FORMATS = "not a PNG, JPEG, BMP, GIF, WebP, TIFF or PPM/PGM/PBM image"


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["explain", *args])
    out, err = capsys.readouterr()
    return status, out, err


def grey(values: np.ndarray) -> np.ndarray:
    """The (3, H, W) input of a grey image with values in [0, 1]."""
    return np.repeat(values[None].astype(np.float32), 3, axis=0)


# -- modes -----------------------------------------------------------------------------------------
def test_sixteen_bit_grey_png_is_scaled_by_65535_not_clipped(tmp_path):
    raw = (np.arange(48, dtype=np.uint32).reshape(6, 8) * 1365).astype(np.uint16)  # 0 .. 64155
    Image.fromarray(raw).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    loaded = Preprocess().load(tmp_path / "g16.png")
    np.testing.assert_allclose(loaded, grey(raw / 65535.0), rtol=0, atol=1e-7)
    assert 0.45 < loaded.mean() < 0.5  # Pillow's convert("RGB") would make this about 1 (everything over 255 clips)


def test_sixteen_bit_pgm_and_32_bit_integer_tiff(tmp_path):
    (tmp_path / "m1000.pgm").write_bytes(b"P5\n2 1\n1000\n" + struct.pack(">HH", 250, 1000))
    np.testing.assert_allclose(Preprocess().load(tmp_path / "m1000.pgm"), grey(np.array([[0.25, 1.0]])), atol=2e-5)
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_allclose(Preprocess().load(tmp_path / "i.tif"), grey(np.array([[0, 32768 / 65535, 1]])),
                               atol=1e-7)
    Image.fromarray(np.array([[-5, 70000]], dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(InputError, match=r"^image '.*wide.tif' \(mode I, 32-bit integers\) has values from -5 to "
                                         r"70000; zplug reads integer images as 16-bit values \(0 to 65535\)"):
        Preprocess().load(tmp_path / "wide.tif")


def test_float_images_must_hold_values_in_unit_interval(tmp_path):
    values = np.array([[0.0, 0.25, 1.0]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(Preprocess().load(tmp_path / "f.tif"), grey(values))
    Image.fromarray(np.array([[-0.5, np.nan, 3.0]], dtype=np.float32)).save(tmp_path / "bad.tif")
    with pytest.raises(InputError) as info:
        Preprocess().load(tmp_path / "bad.tif")
    assert str(info.value) == (f"image '{tmp_path / 'bad.tif'}' (mode F, 32-bit floats) has values from -0.5 to 3 and "
                               "values that are not finite; zplug reads floating-point images as values in [0, 1]: "
                               "scale it to [0, 1]")


def test_eight_bit_modes_by_hand(tmp_path):
    """LA drops alpha, P looks colours up, CMYK is ``255 - (c (255 - k) / 255 + k)`` as Pillow, 1 is 0 or 1."""
    la = Image.fromarray(np.array([[[10, 0], [200, 255]]], dtype=np.uint8), mode="LA")
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 51, 102])
    palette.putdata([1, 0])
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 51, 102))
    bits = Image.fromarray(np.array([[True, False, True]]))
    cases = [
        (la, "la.png", grey(np.array([[10, 200]]) / 255)),
        (palette, "p.png", np.array([[[0, 255]], [[51, 0]], [[102, 0]]], dtype=np.float32) / 255),
        (cmyk, "cmyk.tif", np.array([[[255 - 102]], [[0]], [[255 - 51 * 153 / 255 - 102]]]) / 255),
        (bits, "bits.png", grey(np.array([[1, 0, 1]]))),
    ]
    for image, name, expected in cases:
        image.save(tmp_path / name)
        assert Image.open(tmp_path / name).mode == image.mode
        np.testing.assert_allclose(Preprocess().load(tmp_path / name), expected, rtol=0, atol=0.5 / 255, err_msg=name)


def test_high_bit_depth_is_resized_without_clipping(tmp_path):
    raw = np.full((40, 60), 60000, dtype=np.uint16)
    raw[:, :30] = 1000
    Image.fromarray(raw).save(tmp_path / "g16.png")
    loaded = Preprocess(resize=20, crop=16).load(tmp_path / "g16.png")
    assert loaded.shape == (3, 16, 16)
    expected = Image.fromarray((raw / 65535).astype(np.float32)).resize((30, 20), Image.Resampling.BILINEAR)
    np.testing.assert_allclose(loaded[0], np.asarray(expected)[2:18, 7:23], atol=1e-7)


def test_rgb_images_load_as_before(tmp_path):
    """8-bit RGB goes through Pillow's uint8 resize, as torchvision's Resize does (unchanged behaviour)."""
    Image.fromarray(np.arange(60 * 40 * 3, dtype=np.uint8).reshape(40, 60, 3)).save(tmp_path / "wide.png")
    expected = Image.open(tmp_path / "wide.png").convert("RGB").resize((30, 20), Image.Resampling.BILINEAR)
    expected = np.asarray(expected.crop((7, 2, 23, 18)), dtype=np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_array_equal(Preprocess(resize=20, crop=16).load(tmp_path / "wide.png"), expected)


# -- limits and damaged files ----------------------------------------------------------------------
def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (a decompression bomb as far as the header goes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_pixel_and_file_size_limits(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_header_only(20000, 20000))
    with pytest.raises(InputError) as info:
        read_image(tmp_path / "bomb.png")
    assert str(info.value) == (f"image '{tmp_path / 'bomb.png'}' is 20000x20000 (400 megapixels), over the limit of "
                               "50 megapixels; raise --max-pixels to read it")
    with open(tmp_path / "huge.png", "wb") as file:  # sparse: no disk space used
        file.truncate(20_000_000)
    with pytest.raises(InputError) as info:
        read_image(tmp_path / "huge.png", Limits(max_pixels=1000))
    assert str(info.value) == (f"input '{tmp_path / 'huge.png'}' is 20 MB, over the limit of 16.8 MB for images of "
                               "at most 0.001 megapixels; raise --max-pixels to read it")
    assert Limits(max_pixels=1000).max_bytes == 16 * 1000 + 16 * 2**20


def test_resized_size_limit(tmp_path):
    Image.new("RGB", (1, 200)).save(tmp_path / "thin.png")
    with pytest.raises(InputError) as info:
        Preprocess(resize=100).check(tmp_path / "thin.png", Limits(max_pixels=100_000))
    assert str(info.value) == (f"image '{tmp_path / 'thin.png'}' (1x200) resized to a shorter side of 100 is "
                               "100x20000 (2 megapixels), over the limit of 0.1 megapixels; lower --resize or raise "
                               "--max-pixels")
    assert Preprocess(resize=100).check(tmp_path / "thin.png") == (3, 20000, 100)


LIMIT_ERRORS = [
    (["--resize", "-5"], "--resize must be 0 (off) or a positive number of pixels (got -5)"),
    (["--crop", "-3"], "--crop must be 0 (off) or a positive number of pixels (got -3)"),
    (["--resize", "100000"], "--resize 100000 makes images of at least 100000x100000 pixels, over the limit of "
     "50,000,000 pixels; lower --resize or raise --max-pixels"),
    (["--crop", "64", "--max-pixels", "1000"], "--crop 64 makes images of at least 64x64 pixels, over the limit of "
     "1,000 pixels; lower --crop or raise --max-pixels"),
    (["--resize", "0", "--crop", "0", "--max-pixels", "1000"], "image '{circle}' is 32x32 (0.00102 megapixels), over "
     "the limit of 0.001 megapixels; raise --max-pixels to read it"),
    (["--max-pixels", "0"], "--max-pixels must be at least 1 (got 0)"),
    (["--sheet-limit", "64", "--max-pixels", "30000"], "--sheet-limit 64: the contact sheet of 1 inputs of 32x32 "
     "would be about 264x132 pixels, over the limit of 30,000; lower --sheet-limit (0: no sheet) or raise "
     "--max-pixels"),
    (["--level", "nan"], "--level must be a positive number (got nan)"),
    (["--seed", "-1"], "--seed must be between 0 and 2**63 - 2**32 (got -1)"),
]


@pytest.mark.parametrize(("options", "message"), LIMIT_ERRORS, ids=[m[:30] for _, m in LIMIT_ERRORS])
def test_option_limits_are_one_line_errors(registry, capsys, tmp_path, options, message):
    status, out, err = run(capsys, str(CIRCLE0), "--demo", "--out", str(tmp_path / "out"), *options)
    assert (status, out) == (2, "")
    assert err == "zplug: error: " + message.replace("{circle}", str(CIRCLE0)) + "\n"
    assert not (tmp_path / "out").exists()


def test_damaged_files(tmp_path):
    data = CIRCLE0.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "ps.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    messages = {
        "cut.png": "cannot read image '{p}': the file is damaged or truncated (image file is truncated)",
        "empty.png": "cannot read image '{p}': the file is empty",
        "ps.eps": "cannot read image '{p}': " + FORMATS,  # EPS would run Ghostscript: never opened
    }
    for name, message in messages.items():
        with pytest.raises(InputError) as info:
            read_image(tmp_path / name)
        assert str(info.value).startswith(message.format(p=tmp_path / name)), name


# -- --skip-bad ------------------------------------------------------------------------------------
@pytest.fixture
def with_bad(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for i, name in enumerate(("circle_0", "cross_1", "square_2")):
        shutil.copy(SAMPLES / name.split("_")[0] / f"{name}.png", folder / f"{2 * i}.png")
    (folder / "1.png").write_text("not an image\n")
    (folder / "3.png").write_bytes(CIRCLE0.read_bytes()[:100])
    return folder


def test_unreadable_inputs_are_listed_before_anything_runs(registry, capsys, tmp_path, with_bad):
    status, out, err = run(capsys, str(with_bad), "--demo", "--out", str(tmp_path / "out"))
    assert (status, out) == (2, "")
    assert err.splitlines() == [
        f"zplug: cannot read image '{with_bad / '1.png'}': {FORMATS}",
        f"zplug: cannot read image '{with_bad / '3.png'}': the file is damaged or truncated (image file is "
        "truncated)",
        "zplug: error: 2 of 5 inputs cannot be used (listed above); give --skip-bad to explain the other 3 inputs",
    ]
    assert not (tmp_path / "out").exists()


def test_skip_bad_explains_the_others_with_their_numbers(registry, capsys, tmp_path, with_bad):
    status, out, err = run(capsys, str(with_bad), "--demo", "--out", str(tmp_path / "out"), "--skip-bad")
    assert status == 0
    assert err.splitlines()[0] == f"zplug: skipped: cannot read image '{with_bad / '1.png'}': {FORMATS}"
    assert len(err.splitlines()) == 2
    lines = out.splitlines()
    assert lines[0] == "explained 3 inputs, target pred"
    assert "skipped: 2 unusable inputs (--skip-bad; listed on stderr)" in lines
    assert sorted(p.name for p in (tmp_path / "out" / "heatmaps").iterdir()) == ["00_0.png", "02_2.png", "04_4.png"]


def test_class_names_must_match_the_outputs(registry, capsys, tmp_path):
    names = tmp_path / "names.txt"
    cases = [
        ("a\nb\n", f"--class-names '{names}' has 2 names but model 'demo' has 4 outputs; give one name per output, "
                   "in output order"),
        ("a\nb\n# comment\na\nc\n", f"class-names file '{names}' names 'a' twice (lines 1 and 4); class names must "
                                    "be unique"),
        ("\n# only a comment\n", f"class-names file '{names}' names no class; give one name per line, in output "
                                 "order"),
    ]
    for text, message in cases:
        names.write_text(text)
        status, out, err = run(capsys, str(CIRCLE0), "--demo", "--class-names", str(names), "--out",
                               str(tmp_path / "out"))
        assert (status, err) == (2, f"zplug: error: {message}\n")
    names.write_bytes(b"caf\xe9\n")
    status, _, err = run(capsys, str(CIRCLE0), "--demo", "--class-names", str(names), "--out", str(tmp_path / "out"))
    assert err == f"zplug: error: class-names file '{names}' is not UTF-8 text (byte 3); save it as UTF-8\n"
    assert not (tmp_path / "out").exists()
