#!/usr/bin/env python
"""Plot a training log: KL per step over epochs (3D surface and heat map, PNG) and an
interactive HTML page with the train / valid / test nll curves.

Example:

    python plot-kl.py runs/my-mnist_log.pkl     # -> runs/my-mnist_kl.png, _kl_heatmap.png, _log.html
"""
import draw.startup  # noqa: F401  (first: a Ctrl-C while torch loads is one line)

import argparse

from draw.cli import ArgumentParser, positive, run
from draw.outputs.klplot import MAX_DPI, SPLITS, main


def parse_args() -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log_file", type=str, help="a <name>_log.pkl file written by train-draw.py")
    parser.add_argument("--split", type=str, choices=SPLITS, default=None,
                        help="whose KL terms to plot (default: train, or the first split the log "
                             "has them for: a run stopped in its first epoch has only valid and "
                             "test)")
    parser.add_argument("--surface", type=str, default=None,
                        help="PNG of the 3D surface (default: <name>_kl.png beside the log)")
    parser.add_argument("--heatmap", type=str, default=None,
                        help="PNG of the heat map (default: <name>_kl_heatmap.png beside the log)")
    parser.add_argument("--html", type=str, default=None,
                        help="interactive Bokeh page (default: <name>_log.html beside the log)")
    parser.add_argument("--dpi", type=positive, default=100,
                        help=f"resolution of the 8x6 inch PNG files (at most {MAX_DPI}: pictures are "
                             f"limited to what Pillow opens without a decompression-bomb warning)")
    parser.add_argument("--show", action="store_true",
                        help="also open the surface and heat map in windows (where a display exists)")
    return parser.parse_args()


if __name__ == "__main__":
    run(main, parse_args())
