#!/usr/bin/env python
"""Sample from a trained DRAW model: samples/sample.png, time-NNN.png, sequence.gif, strip.png.

Example (the classic command line):

    python sample.py svhn_model.pkl --channels 3 --size 32
"""
import draw.startup  # noqa: F401  (first: a Ctrl-C while torch loads is one line)

import argparse

from draw.cli import ArgumentParser, positive, run, seed, temperature
from draw.outputs.sampling import main


def pair(text: str) -> tuple[int, int]:
    """"32" -> (32, 32); "8x10" -> (8, 10)."""
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected N or AxB with positive integers, got {text!r}")
    return parts


def milliseconds(text: str) -> int:
    value = int(text)
    if value < 10:
        # GIF stores delays in hundredths of a second; browsers replace shorter ones with 100 ms
        raise argparse.ArgumentTypeError(f"expected at least 10 (milliseconds), got {text!r}")
    return value


def parse_args() -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_file", type=str, help="a <name>_model.pkl file written by train-draw.py")
    parser.add_argument("--channels", type=positive, default=None,
                        help="image channels the model must draw (checked against the model file)")
    parser.add_argument("--size", type=pair, default=None,
                        help="image size the model must draw, N or HxW (checked against the model file)")
    parser.add_argument("--n-samples", type=positive, default=None,
                        help="number of samples (default: fills --grid, or 100)")
    parser.add_argument("--grid", type=pair, default=None,
                        help="grid shape ROWSxCOLS (default: the squarest grid for --n-samples)")
    parser.add_argument("--seed", type=seed, default=None,
                        help="seed of the prior noise, for repeatable samples (default: random)")
    parser.add_argument("--temperature", type=temperature, default=1.0,
                        help="scale of the prior noise, z_t ~ N(0, TEMPERATURE^2 I) (a "
                             "learned prior's N(m_t, TEMPERATURE^2 s_t^2)): below 1 the "
                             "samples are likelier and less varied; 1 samples the model "
                             "(default: 1)")
    parser.add_argument("--output-dir", type=str, default="samples",
                        help="directory for sample.png, time-NNN.png, sequence.gif and strip.png "
                             "(the time-NNN.png past this model's steps, left by an earlier "
                             "call, are removed)")
    parser.add_argument("--boxes", action="store_true",
                        help="outline each step's write-attention window on its frame "
                             "(time-NNN.png, sequence.gif, strip.png)")
    parser.add_argument("--scale", type=positive, default=1,
                        help="enlarge every image this many times (nearest neighbour)")
    parser.add_argument("--duration-ms", type=milliseconds, default=100,
                        help="display time of each step in sequence.gif, milliseconds")
    parser.add_argument("--hold-last-ms", type=milliseconds, default=1000,
                        help="display time of the finished drawing in sequence.gif, milliseconds")
    parser.add_argument("--device", type=str, default="auto",
                        help="auto (CUDA where available), cpu, cuda or cuda:N")
    return parser.parse_args()


if __name__ == "__main__":
    run(main, parse_args())
