"""Heatmap images: parity with zennit.image 0.5.1, Pillow 13 palettes, normalisations, grids, sheets."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from zplug.cmap import get_cmap
from zplug.errors import UnknownNameError
from zplug.image import (
    contact_sheet,
    gridify,
    heatmaps,
    imgify,
    imsave,
    input_images,
    normalize_relevance,
    palette,
    save_heatmaps,
)

zennit_image = pytest.importorskip("zennit.image")


@pytest.fixture
def zennit_flat_palette(monkeypatch):
    """Zennit's imgify with its palette handed over as a flat list, so that it works on Pillow 13."""
    original = zennit_image.palette
    monkeypatch.setattr(zennit_image, "palette", lambda *args, **kwargs: original(*args, **kwargs).reshape(-1).tolist())
    return zennit_image.imgify


def _rng():
    return np.random.default_rng(0)


CASES = [
    ("gray 2d", lambda r: r.normal(size=(8, 9)), {}),
    ("gray 2d cmap level", lambda r: r.normal(size=(8, 9)), {"cmap": "coldnhot", "level": 2.0, "symmetric": True}),
    ("gray 2d bounds", lambda r: r.normal(size=(8, 9)), {"vmin": -0.5, "vmax": 1.5, "cmap": "0f0,f0f"}),
    ("rgb channels first", lambda r: r.normal(size=(3, 8, 9)), {}),
    ("rgb channels last", lambda r: r.uniform(size=(8, 9, 3)), {"vmin": 0.0}),
    ("one channel first", lambda r: r.normal(size=(1, 8, 9)), {"cmap": "hot"}),
    ("uint8", lambda r: r.integers(0, 256, size=(8, 9)).astype(np.uint8), {"cmap": "france"}),
    ("grid gray", lambda r: r.normal(size=(5, 8, 9)), {"grid": True, "symmetric": True}),
    ("grid rgb first", lambda r: r.normal(size=(5, 3, 8, 9)), {"grid": True}),
    ("grid rgb last shape", lambda r: r.normal(size=(5, 8, 9, 3)), {"grid": (2, 3)}),
    ("grid one channel", lambda r: r.normal(size=(4, 1, 8, 8)), {"grid": (1, 4), "cmap": "seismic"}),
    ("grid fill", lambda r: r.normal(size=(7, 8, 8)), {"grid": True, "gridfill": 3}),
    ("grid uint8", lambda r: r.integers(0, 256, size=(3, 8, 9)).astype(np.uint8), {"grid": True}),
]


@pytest.mark.parametrize(("make", "kwargs"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_imgify_equals_zennit(zennit_flat_palette, make, kwargs):
    array = make(_rng())
    theirs, ours = zennit_flat_palette(array, **kwargs), imgify(array, **kwargs)
    assert ours.mode == theirs.mode and ours.size == theirs.size
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    np.testing.assert_array_equal(np.asarray(ours.convert("RGB")), np.asarray(theirs.convert("RGB")))


def test_zennit_palette_images_break_on_this_pillow_but_ours_save():
    array = _rng().normal(size=(8, 8))
    broken = zennit_image.imgify(array)
    if int(Image.__version__.split(".")[0]) >= 13:
        with pytest.raises(TypeError):
            broken.save(io.BytesIO(), format="png")
    imgify(array).save(io.BytesIO(), format="png")


@pytest.mark.parametrize("cmap", ["bwr", "coldnhot", "gray", "0055a4,80:fff,ef4135"])
def test_palette_png_round_trip(tmp_path, cmap):
    array = _rng().normal(size=(16, 12))
    path = tmp_path / "heat.png"
    imsave(path, array, cmap=cmap, level=1.5, symmetric=True)
    loaded = Image.open(path)
    assert loaded.mode == "P" and loaded.size == (12, 16)
    expected = imgify(array, cmap=cmap, level=1.5, symmetric=True)
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(expected))
    colours = np.asarray(loaded.getpalette()[: 256 * 3], dtype=np.uint8).reshape(256, 3)
    np.testing.assert_array_equal(colours, get_cmap(cmap).palette(1.5))
    np.testing.assert_array_equal(palette(cmap, 1.5), get_cmap(cmap).palette(1.5))


def test_rgb_png_round_trip_to_binary_file():
    array = _rng().integers(0, 256, size=(3, 10, 7)).astype(np.uint8)
    buffer = io.BytesIO()
    imsave(buffer, array, format="png", writer_params={"compress_level": 1})
    buffer.seek(0)
    loaded = Image.open(buffer)
    assert loaded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(loaded), array.transpose(1, 2, 0))


def test_imgify_normalises_truncating():
    image = imgify(np.array([[0.0, 0.5, 1.0, 2.0]]))
    np.testing.assert_array_equal(np.asarray(image), [[0, 63, 127, 255]])  # (a - 0) / 2 * 255, truncated


def test_constant_arrays_give_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.asarray(imgify(np.full((4, 4), 3.0))).tolist() == [[127] * 4] * 4
        assert np.asarray(imgify(np.zeros((4, 4)), symmetric=True)).max() == 127
        assert np.asarray(imgify(np.ones((2, 4, 4)), grid=True)).shape == (8, 4)
        clipped = imgify(np.array([[0.0, 1.0, 2.0]]), vmin=1.0, vmax=1.0)
        np.testing.assert_array_equal(np.asarray(clipped), [[0, 127, 255]])
        for norm in ("symmetric", "absolute", "unaligned"):
            assert np.isfinite(normalize_relevance(np.zeros((2, 3, 4, 4)), norm)).all()


def test_imgify_accepts_tensors_and_rejects_bad_shapes():
    tensor = torch.randn(3, 5, 6, requires_grad=True)
    assert imgify(tensor).mode == "RGB"
    with pytest.raises(ValueError, match="colour channels"):
        imgify(np.zeros((4, 5, 6)))
    with pytest.raises(ValueError, match="shape"):
        imgify(np.zeros((2, 3, 4, 5)))
    with pytest.raises(TypeError, match="grid"):
        imgify(np.zeros((2, 4, 4)), grid=(1, 2, 3))
    with pytest.raises(ValueError, match="batch"):
        imgify(np.zeros((4, 4)), grid=True)


def test_gridify_layout_and_fill():
    batch = np.arange(5 * 2 * 2).reshape(5, 2, 2) + 10
    grid = gridify(batch)  # 2 columns, 3 rows
    assert grid.shape == (6, 4, 1)
    np.testing.assert_array_equal(grid[2:4, 2:4, 0], batch[3])
    np.testing.assert_array_equal(grid[4:6, 2:4, 0], np.full((2, 2), 10))  # the minimum fills
    padded = gridify(batch, shape=(1, 5), fill_value=0, padding=1)
    assert padded.shape == (2, 14, 1)
    assert (padded[:, 2, 0] == 0).all()
    np.testing.assert_array_equal(padded[:, 12:14, 0], batch[4])
    rgb = gridify(np.stack([np.zeros((3, 2, 2)), np.ones((3, 2, 2))]))  # channels first
    assert rgb.shape == (4, 2, 3)
    with pytest.raises(ValueError, match="cannot hold"):
        gridify(batch, shape=(2, 2))


def test_normalize_relevance_formulas():
    relevance = _rng().normal(size=(3, 2, 5, 4))
    summed = relevance.sum(1)
    amax = np.abs(summed).max(axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(normalize_relevance(relevance, "symmetric"), (summed + amax) / (2 * amax))
    np.testing.assert_array_equal(normalize_relevance(relevance, "absolute"), np.abs(summed) / amax)
    low, high = summed.min(axis=(1, 2), keepdims=True), summed.max(axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(normalize_relevance(relevance, "unaligned"), (summed - low) / (high - low))
    # per sample: scaling one sample changes nothing
    scaled = relevance.copy()
    scaled[1] *= 1000
    np.testing.assert_allclose(normalize_relevance(scaled), normalize_relevance(relevance), rtol=1e-12)
    # zero maps to the middle for symmetric
    assert normalize_relevance(np.array([[-2.0, 0.0, 1.0]]), channel_axis=None)[0, 1] == 0.5
    assert normalize_relevance(torch.tensor(relevance)).shape == (3, 5, 4)
    assert normalize_relevance(np.ones((5, 4)) * 2, "absolute").min() == 1.0
    with pytest.raises(UnknownNameError, match="did you mean 'absolute'"):
        normalize_relevance(relevance, "absolut")
    with pytest.raises(ValueError, match="shape"):
        normalize_relevance(np.zeros(4))


def test_heatmaps_and_save_heatmaps(tmp_path):
    relevance = torch.randn(3, 3, 6, 5)
    images = heatmaps(relevance, norm="absolute", cmap="hot", level=1.0)
    assert [image.mode for image in images] == ["P"] * 3
    unit = normalize_relevance(relevance, "absolute")
    np.testing.assert_array_equal(np.asarray(images[2]), (unit[2] * 255).astype(np.uint8))
    paths = save_heatmaps(relevance, str(tmp_path / "out" / "heatmap_{sample:02d}.png"), norm="absolute", cmap="hot")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["heatmap_00.png", "heatmap_01.png", "heatmap_02.png"]
    for image, path in zip(images, paths):
        np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(image.convert("RGB")))


def test_input_images_bounds():
    inputs = np.stack([np.zeros((3, 2, 2)), np.full((3, 2, 2), 0.5), np.full((3, 2, 2), 2.0)])
    assert [np.asarray(i)[0, 0, 0] for i in input_images(inputs)] == [0, 127, 255]
    standardised = _rng().normal(size=(2, 3, 4, 4))
    stretched = [np.asarray(i) for i in input_images(standardised, bounds=None)]
    assert all(a.min() == 0 and a.max() == 255 for a in stretched)


def test_contact_sheet_layout(tmp_path):
    inputs = _rng().uniform(size=(5, 3, 8, 8))
    relevance = _rng().normal(size=(5, 3, 8, 8))
    sheet = contact_sheet(inputs, relevance, columns=2, scale=2, padding=4, norm="unaligned", cmap="gray")
    assert sheet.mode == "RGB"
    cell_w, cell_h = 2 * 16 + 4, 16
    assert sheet.size == (2 * (cell_w + 4) + 4, 3 * (cell_h + 4) + 4)
    pixels = np.asarray(sheet)
    # sample 3 sits in row 1, column 1: its input, then its heatmap
    x, y = 4 + (cell_w + 4), 4 + (cell_h + 4)
    expected_input = np.asarray(input_images(inputs[3:4])[0].resize((16, 16), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(pixels[y : y + 16, x : x + 16], expected_input)
    heat = heatmaps(relevance[3:4], norm="unaligned", cmap="gray")[0].convert("RGB")
    expected_heat = np.asarray(heat.resize((16, 16), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(pixels[y : y + 16, x + 20 : x + 36], expected_heat)
    labelled = contact_sheet(inputs, relevance, labels=[f"sample {i}" for i in range(5)], columns=2)
    assert labelled.height > contact_sheet(inputs, relevance, columns=2).height
    strip = np.asarray(labelled)[4 + 8 : 4 + 8 + 16, 4 : 4 + 40]  # under the first pair: text on white
    assert (strip < 128).any() and (strip == 255).any()
    labelled.save(tmp_path / "sheet.png")
    with pytest.raises(ValueError, match="labels"):
        contact_sheet(inputs, relevance, labels=["one"])
    with pytest.raises(ValueError, match="heatmaps"):
        contact_sheet(inputs, relevance[:2])
