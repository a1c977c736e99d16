#!/usr/bin/env python
"""Export a trained model to share: its parameters, config, settings and log, without the
optimiser and random states a resume needs (a third of the size).

Example:

    python export-model.py runs/paper-20261201-152946 pretrained/bmnist-r2-w5-t64_model.pkl
    python export-model.py runs/RUN pretrained/NAME_model.pkl --half    # half the size again
"""
import draw.startup  # noqa: F401  (first: a Ctrl-C while torch loads is one line)

from draw.cli import ArgumentParser, run
from draw.training.export import main


def parse_args():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a run directory, or a <name>_model.pkl file written by "
                                       "train-draw.py or train-classifier.py")
    parser.add_argument("destination", help="the file to write, e.g. "
                                            "pretrained/<name>_model.pkl; an existing file is "
                                            "replaced only where it is an exported model file")
    parser.add_argument("--half", action="store_true",
                        help="store the parameters as float16: half the size; they load as "
                             "float32, each rounded to 11 significant bits")
    return parser.parse_args()


if __name__ == "__main__":
    run(main, parse_args())
