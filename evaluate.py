#!/usr/bin/env python
"""Evaluate a model file: a DRAW model's test bound and importance-sampled NLL, a classifier's test
error (draw/outputs/scores.py).

    python evaluate.py bmnist-20250101-120000/bmnist-r2-w5-t64-enc256-dec256-z100-lr34_model.pkl
"""
import draw.startup  # noqa: F401  (first: a Ctrl-C while torch loads is one line)

import argparse

from draw.cli import ArgumentParser, positive, run, seed
from draw.outputs.scores import DEFAULT_SAMPLES, main


def parse_args() -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_file", type=str, help="a <name>_model.pkl file written by train-draw.py or "
                        "train-classifier.py")
    parser.add_argument("--dataset", type=str, default=None,
                        help="dataset to evaluate on (default: the one the model was trained on)")
    parser.add_argument("--split", type=str, default="test", choices=("train", "valid", "test"),
                        help="which split (default: %(default)s)")
    parser.add_argument("-k", "--samples", type=positive, default=DEFAULT_SAMPLES,
                        help="importance samples K per image (default: %(default)s); each image "
                             "costs about K + 3 passes, and the bound (eq. 12) does not depend "
                             "on K. For final numbers use -k 100 or more, on a GPU. A long "
                             "evaluation prints its expected time after the first images")
    parser.add_argument("--bs", "--batch-size", type=positive, default=100, dest="batch_size",
                        help="images per batch of the bound (default: %(default)s)")
    parser.add_argument("--subset", type=positive, default=None,
                        help="evaluate on this many randomly chosen images (default: all; never "
                             "the first N, as binarized MNIST's test split is sorted by digit)")
    parser.add_argument("--seed", type=seed, default=0,
                        help="seed of the posterior noise and of --subset (default: %(default)s)")
    parser.add_argument("--device", type=str, default="auto",
                        help="cpu, cuda, cuda:N, or auto: CUDA when available "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=positive, default=None,
                        help="CPU threads (default: torch's choice); 1 is fastest when other "
                             "jobs share the cores")
    parser.add_argument("--data-dir", type=str, default=None,
                        help="where datasets live (default: $DRAW_DATA_PATH, $FUEL_DATA_PATH, "
                             "or a cache directory)")
    return parser.parse_args()


if __name__ == "__main__":
    run(main, parse_args())
