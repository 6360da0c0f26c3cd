"""Command-line options shared by the commands that read images (``explain``, ``evaluate``, ``tune``)."""

from __future__ import annotations

import argparse


def add_preprocessing_options(parser: argparse.ArgumentParser) -> None:
    """Add the preprocessing group: resize, crop and normalisation (defaults from the model's input convention)."""
    group = parser.add_argument_group("preprocessing (defaults from the model's input convention)")
    group.add_argument("--resize", type=int, metavar="N", help="resize the shorter side to N pixels (0: don't)")
    group.add_argument("--crop", type=int, metavar="N", help="centre-crop N x N pixels (0: don't)")
    group.add_argument("--normalize", choices=("auto", "imagenet", "none"), default="auto",
                       help="input normalisation: the model's (auto), ImageNet mean/std, or none")
    group.add_argument("--mean", metavar="R,G,B", help="normalise with this mean (with --std)")
    group.add_argument("--std", metavar="R,G,B", help="normalise with this standard deviation (with --mean)")


__all__ = ("add_preprocessing_options",)
