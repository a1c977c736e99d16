#!/usr/bin/env python
"""Plot a training log: KL per step over epochs (3D surface and heat map, PNG) and an
interactive HTML page with the train / valid / test nll curves.

Example:

    python plot-kl.py runs/my-mnist_log.pkl     # -> runs/my-mnist_kl.png, _kl_heatmap.png, _log.html
"""
import argparse

from draw.training.checkpoint import load_log
from draw.cli import ArgumentParser, run
from draw.outputs.display import pyplot_or_warn
from draw.outputs.klplot import SPLITS, kl_terms, plot_kl_heatmap, plot_kl_surface, save_figure, save_html


def output_stem(log_file: str) -> str:
    """runs/name_log.pkl -> runs/name: the prefix of the default output files."""
    for suffix in ("_log.pkl", ".pkl"):
        if log_file.endswith(suffix):
            return log_file[: -len(suffix)]
    return log_file


def parse_args() -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log_file", type=str, help="a <name>_log.pkl file written by train-draw.py")
    parser.add_argument("--split", type=str, choices=SPLITS, default="train",
                        help="whose KL terms to plot")
    parser.add_argument("--surface", type=str, default=None,
                        help="PNG of the 3D surface (default: <name>_kl.png beside the log)")
    parser.add_argument("--heatmap", type=str, default=None,
                        help="PNG of the heat map (default: <name>_kl_heatmap.png beside the log)")
    parser.add_argument("--html", type=str, default=None,
                        help="interactive Bokeh page (default: <name>_log.html beside the log)")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNG files")
    parser.add_argument("--show", action="store_true",
                        help="also open the surface and heat map in windows (where a display exists)")
    return parser.parse_args()


def main(log_file, split, surface, heatmap, html, dpi, show):
    rows = load_log(log_file)
    x, kl, x_label = kl_terms(rows, split)
    stem = output_stem(log_file)
    surface = surface or f"{stem}_kl.png"
    heatmap = heatmap or f"{stem}_kl_heatmap.png"
    html = html or f"{stem}_log.html"
    save_figure(plot_kl_surface, surface, x, kl, x_label, dpi=dpi)
    save_figure(plot_kl_heatmap, heatmap, x, kl, x_label, dpi=dpi)
    save_html(rows, html, split)
    print(f"{kl.shape[0]} rows x {kl.shape[1]} steps of {split} KL; wrote {surface}, {heatmap}, {html}")
    plt = pyplot_or_warn() if show else None
    if plt is not None:
        plot_kl_surface(plt.figure("KL surface"), x, kl, x_label)
        plot_kl_heatmap(plt.figure("KL heat map"), x, kl, x_label)
        plt.show()


if __name__ == "__main__":
    run(main, parse_args())
