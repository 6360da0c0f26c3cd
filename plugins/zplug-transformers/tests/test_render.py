"""Token colours, the terminal view, the HTML page and JSON (no model needed); the page in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from zplug_transformers.render import NEGATIVE, POSITIVE, TokenScores, colour, dumps, page, terminal, to_json

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _scores(relevance=(0.5, -1.0, 2.0, 0.0)) -> TokenScores:
    return TokenScores(tokens=["The", " cat", " <sat>", " &"], relevance=relevance, target=" on", logit=3.25,
                       text="The cat <sat> &", preset="attnlrp")


def test_colours_run_from_white_to_the_promised_ends():
    assert colour(0.0, 2.0) == (255, 255, 255)
    assert colour(2.0, 2.0) == POSITIVE and colour(-2.0, 2.0) == NEGATIVE
    assert colour(5.0, 2.0) == POSITIVE  # clipped
    half = colour(1.0, 2.0)
    assert half == tuple(round(255 + (p - 255) / 2) for p in POSITIVE)
    assert colour(float("nan"), 1.0) == (255, 255, 255)


def test_scale_is_the_largest_magnitude_and_one_for_all_zeros():
    assert _scores().scale == 2.0
    assert _scores((0.0, 0.0, 0.0, 0.0)).scale == 1.0
    with pytest.raises(ValueError, match="4 tokens but 3 relevance values"):
        TokenScores(tokens=["a", "b", "c", "d"], relevance=[1, 2, 3], target="x", logit=0.0)


def test_terminal_colours_each_token_and_plain_text_shows_values():
    coloured = terminal(_scores())
    first, body, legend = coloured.split("\n")
    assert first == "target ' on' (logit 3.25), relevance sum 1.5, attnlrp"
    assert f"\x1b[48;2;{POSITIVE[0]};{POSITIVE[1]};{POSITIVE[2]}m\x1b[38;2;255;255;255m <sat>\x1b[0m" in body
    assert re.sub(r"\x1b\[[0-9;]*m", "", body) == "The cat <sat> &"
    assert "+2" in legend and "-2" in legend
    plain = terminal(_scores(), color=False)
    assert "\x1b" not in plain
    assert plain.split("\n")[1] == "The[+0.5]  cat[-1]  <sat>[+2]  &[+0]"


def test_the_page_is_self_contained_escaped_and_states_its_colours():
    text = page([_scores()])
    assert "&lt;sat&gt;" in text and "<sat>" not in text.replace("&lt;sat&gt;", "")
    assert not re.search(r"(src|href)=", text)  # no scripts, images, fonts or links from elsewhere
    assert "default-src 'none'" in text
    assert f"most relevant token of a prompt: rgb({POSITIVE[0]}, {POSITIVE[1]}, {POSITIVE[2]})" in text
    assert text.count('class="tok"') == 4


def test_json_holds_every_token_with_its_value():
    record = json.loads(dumps(_scores()))
    assert record == to_json(_scores())
    assert [t["token"] for t in record["tokens"]] == ["The", " cat", " <sat>", " &"]
    assert [t["relevance"] for t in record["tokens"]] == [0.5, -1.0, 2.0, 0.0]
    assert record["relevance_sum"] == 1.5 and record["target"] == " on"


def _runs(image, rgb, tolerance=3):
    """Length of the longest horizontal run of pixels within ``tolerance`` of ``rgb``."""
    width, height = image.size
    pixels = image.load()
    best = 0
    for y in range(height):
        run = 0
        for x in range(width):
            if all(abs(a - b) <= tolerance for a, b in zip(pixels[x, y][:3], rgb)):
                run += 1
                best = max(best, run)
            else:
                run = 0
    return best


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium browser on this machine (Debian package 'chromium'; "
                    ".ci/run installs it): the HTML page is not checked in a real browser")
def test_in_a_real_browser_the_most_relevant_token_has_the_promised_colour(tmp_path):
    from PIL import Image

    # The most relevant token is the only long one, so only it can draw a long run of one colour; the legend's
    # swatches are 16 pixels wide.
    scores = TokenScores(tokens=["a", " b", " extraordinary", " c", " d"], relevance=[0.2, -0.3, 1.5, 0.1, -1.5],
                         target="x", logit=1.0)
    text = page([scores])
    promised = tuple(int(v) for v in re.search(r"most relevant token of a prompt: rgb\((\d+), (\d+), (\d+)\)",
                                               text).groups())
    path = tmp_path / "page.html"
    path.write_text(text, encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-color-profile=srgb",
         f"--screenshot={shot}", "--window-size=900,500", path.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    image = Image.open(shot).convert("RGB")
    assert _runs(image, promised) >= 60  # " extraordinary" at 20 px monospace is about 170 px wide
    assert _runs(image, NEGATIVE) < 60  # " d" (as large, negative) is short: its colour makes no long run
    assert _runs(image, NEGATIVE) >= 12  # ... but it is there, in the other colour the page promises
