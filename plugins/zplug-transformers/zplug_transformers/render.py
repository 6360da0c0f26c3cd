"""Showing relevance per token: coloured terminal text, a self-contained HTML page, and JSON.

Colours are a diverging scale centred on white: positive relevance shades towards :data:`POSITIVE`,
negative towards :data:`NEGATIVE`, in proportion to ``|relevance| / scale``, where ``scale`` is the
largest absolute relevance of the prompt. The most relevant token is therefore drawn in exactly
:data:`POSITIVE`, which the HTML page states in its legend. Nothing here imports torch.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from typing import Any

import attrs

#: The colour of the largest positive relevance (a dark red), as (red, green, blue).
POSITIVE: tuple[int, int, int] = (178, 24, 43)
#: The colour of the largest negative relevance (a dark blue).
NEGATIVE: tuple[int, int, int] = (33, 102, 172)
WHITE: tuple[int, int, int] = (255, 255, 255)


@attrs.frozen(kw_only=True)
class TokenScores:
    """One explained prompt, ready to show.

    Attributes
    ----------
    tokens : tuple of str
        The tokens as text (padding left out).
    relevance : tuple of float
        One relevance per token.
    target : str
        What was explained: the next token (language models) or the class.
    logit : float
        The explained logit.
    text : str or None
        The prompt as given, if known.
    preset : str
        The preset (or method) that produced the relevance.
    """

    tokens: tuple[str, ...] = attrs.field(converter=tuple)
    relevance: tuple[float, ...] = attrs.field(converter=lambda values: tuple(float(v) for v in values))
    target: str
    logit: float
    text: str | None = None
    preset: str = ""

    def __attrs_post_init__(self) -> None:
        if len(self.tokens) != len(self.relevance):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.relevance)} relevance values")

    @property
    def scale(self) -> float:
        """The largest absolute relevance (1.0 when every relevance is zero, so that all tokens stay white)."""
        largest = max((abs(r) for r in self.relevance if math.isfinite(r)), default=0.0)
        return largest if largest > 0 else 1.0

    @property
    def total(self) -> float:
        """The sum of the tokens' relevance."""
        return math.fsum(self.relevance)


def colour(value: float, scale: float) -> tuple[int, int, int]:
    """The colour of relevance ``value`` on a scale whose ends are ``-scale`` and ``+scale``."""
    t = max(-1.0, min(1.0, value / scale)) if scale > 0 and math.isfinite(value) else 0.0
    end = POSITIVE if t > 0 else NEGATIVE
    return tuple(int(round(w + (e - w) * abs(t))) for w, e in zip(WHITE, end))  # type: ignore[return-value]


def _ink(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white text, whichever reads better on ``rgb`` (by relative luminance)."""
    luminance = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def visible(token: str) -> str:
    """A token as shown: line breaks and tabs as symbols, so that every token keeps a visible box."""
    return token.replace("\n", "\u21b5").replace("\t", "\u2192").replace("\r", "")


# -- terminal ------------------------------------------------------------------------------------
def terminal(scores: TokenScores, *, color: bool = True) -> str:
    """The prompt's tokens coloured by relevance (24-bit ANSI colours), with a header and a legend line.

    Without ``color`` every token is followed by its relevance in brackets, for logs and pipes.
    """
    header = f"target {scores.target!r} (logit {scores.logit:.4g}), relevance sum {scores.total:.4g}"
    if scores.preset:
        header += f", {scores.preset}"
    if not color:
        body = " ".join(f"{visible(t)}[{r:+.3g}]" for t, r in zip(scores.tokens, scores.relevance))
        return f"{header}\n{body}"
    parts = []
    for token, value in zip(scores.tokens, scores.relevance):
        back = colour(value, scores.scale)
        ink = _ink(back)
        parts.append(f"\x1b[48;2;{back[0]};{back[1]};{back[2]}m\x1b[38;2;{ink[0]};{ink[1]};{ink[2]}m"
                     f"{visible(token)}\x1b[0m")
    legend = (f"\x1b[48;2;{POSITIVE[0]};{POSITIVE[1]};{POSITIVE[2]}m  \x1b[0m +{scores.scale:.3g}   "
              f"\x1b[48;2;{NEGATIVE[0]};{NEGATIVE[1]};{NEGATIVE[2]}m  \x1b[0m -{scores.scale:.3g}")
    return f"{header}\n{''.join(parts)}\n{legend}"


# -- HTML ----------------------------------------------------------------------------------------
_CSS = """
body { font: 16px/1.5 sans-serif; margin: 0; padding: 16px; background: #fff; color: #222; }
h1 { font-size: 18px; margin: 0 0 8px 0; }
.prompt { margin: 0 0 24px 0; }
.meta { color: #555; font-size: 14px; margin-bottom: 6px; }
.tokens { font-family: monospace; font-size: 20px; line-height: 2.2; white-space: pre-wrap; }
.tok { padding: 4px 1px; border-radius: 2px; }
.legend { margin-top: 16px; font-size: 14px; color: #333; }
.swatch { display: inline-block; width: 14px; height: 14px; vertical-align: middle; border: 1px solid #999; }
table { border-collapse: collapse; font-size: 13px; margin-top: 8px; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; font-family: monospace; }
td:first-child { text-align: left; }
"""


def _rgb(rgb: tuple[int, int, int]) -> str:
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})"


def _prompt_html(scores: TokenScores, index: int) -> str:
    spans = []
    for token, value in zip(scores.tokens, scores.relevance):
        back = colour(value, scores.scale)
        spans.append(
            f'<span class="tok" style="background-color: {_rgb(back)}; color: {_rgb(_ink(back))}" '
            f'title="{value:+.6g}">{html.escape(visible(token))}</span>'
        )
    rows = "".join(
        f"<tr><td>{html.escape(visible(t))}</td><td>{r:+.6g}</td></tr>" for t, r in zip(scores.tokens, scores.relevance)
    )
    meta = (f"target <b>{html.escape(repr(scores.target))}</b>, logit {scores.logit:.6g}, relevance sum "
            f"{scores.total:.6g}{', ' + html.escape(scores.preset) if scores.preset else ''}")
    return (
        f'<section class="prompt" id="prompt-{index}">\n<div class="meta">{meta}</div>\n'
        f'<div class="tokens">{"".join(spans)}</div>\n'
        f"<details><summary>values</summary><table><tr><th>token</th><th>relevance</th></tr>{rows}</table></details>\n"
        "</section>"
    )


def page(prompts: Sequence[TokenScores], *, title: str = "zplug: relevance per token") -> str:
    """A self-contained HTML page (no scripts, fonts or images from elsewhere) showing ``prompts``.

    Its legend promises the colours: the most relevant token of each prompt is drawn in exactly
    :data:`POSITIVE`, the most negative in :data:`NEGATIVE` (when it is as large in magnitude as the
    most relevant one), zero in white.
    """
    body = "\n".join(_prompt_html(scores, i) for i, scores in enumerate(prompts))
    legend = (
        f'<div class="legend" id="legend"><span class="swatch" style="background-color: {_rgb(POSITIVE)}"></span> '
        f"most relevant token of a prompt: {_rgb(POSITIVE)} &nbsp; "
        f'<span class="swatch" style="background-color: {_rgb(NEGATIVE)}"></span> '
        f"most negative relevance of the same size: {_rgb(NEGATIVE)} &nbsp; white: zero. Colours scale with "
        "|relevance| / (largest |relevance| of the prompt).</div>"
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n{legend}\n</body>\n</html>\n"
    )


# -- JSON ----------------------------------------------------------------------------------------
def to_json(scores: TokenScores) -> dict[str, Any]:
    """A JSON-ready record of one prompt (values as plain floats)."""
    return {
        "text": scores.text,
        "target": scores.target,
        "logit": scores.logit,
        "preset": scores.preset,
        "relevance_sum": scores.total,
        "tokens": [{"token": t, "relevance": r} for t, r in zip(scores.tokens, scores.relevance)],
    }


def dumps(scores: TokenScores) -> str:
    """:func:`to_json` as indented text."""
    return json.dumps(to_json(scores), indent=2, ensure_ascii=False) + "\n"


__all__ = ("NEGATIVE", "POSITIVE", "TokenScores", "colour", "dumps", "page", "terminal", "to_json", "visible")
