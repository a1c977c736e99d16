#!/usr/bin/env python
"""Demonstrate DRAW's attention: an image, the N x N glimpse `read` takes, what `write` paints back.

Writes original.png (the read window outlined in red), read.png and write.png; with --show also
opens them in windows, as the classic attention.py did. Without IMAGE it uses a picture shipped
with the package (a public-domain portrait of Grace Hopper).
"""
import draw.startup  # noqa: F401  (first: a Ctrl-C while torch loads is one line)

import argparse

from draw.cli import ArgumentParser, positive, run
from draw.outputs.attention_demo import main


def point(text: str) -> tuple[float, float]:
    """"40,30.5" -> (40.0, 30.5)."""
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Y,X in pixels, got {text!r}") from None
    return y, x


def parse_args() -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=str, nargs="?", default=None,
                        help="any picture Pillow reads (default: the shipped demo picture)")
    parser.add_argument("--N", type=positive, default=16, help="grid size of the attention window")
    parser.add_argument("--center", type=point, default=None,
                        help="window centre Y,X in 0-based pixels (default: the image centre)")
    parser.add_argument("--delta", type=float, default=None,
                        help="stride between filters in pixels (default: the window covers the "
                             "central half of the image)")
    parser.add_argument("--sigma", type=float, default=None,
                        help="filter standard deviation in pixels (default: delta / 2)")
    parser.add_argument("--output-dir", type=str, default="attention",
                        help="directory for original.png, read.png and write.png")
    parser.add_argument("--read-scale", type=positive, default=8,
                        help="enlarge the N x N glimpse this many times in read.png")
    parser.add_argument("--show", action="store_true",
                        help="also open the three pictures in windows (where a display exists)")
    return parser.parse_args()


if __name__ == "__main__":
    run(main, parse_args())
