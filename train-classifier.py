#!/usr/bin/env python
"""Train DRAW's read-only attention classifier (section 4.1, Table 1) on cluttered MNIST.

The flags (draw/training/classify.py, ClassifierSettings) are parsed here and handed to
draw.training.classify.main. Examples:

    python train-classifier.py --config configs/cluttered-mnist-8.toml     # Table 1, 8 glimpses
    python train-classifier.py --dataset cluttered-mnist --niter 4 --attention 12 --epochs 2
    python train-classifier.py --resume cluttered-mnist-20250101-120000    # continue a run
    torchrun --nproc_per_node=4 train-classifier.py --config configs/cluttered-mnist-8.toml

Checkpoints, log, resume and torchrun work as in train-draw.py; the log holds train_error,
valid_error and test_error in percent, and glimpses.png shows every glimpse's read window over
test images (the paper's Figure 4).
"""
import draw.startup  # noqa: F401  (first: a Ctrl-C while torch loads is one line)

from draw.cli import run
from draw.training.classify import ClassifierSettings, main

if __name__ == "__main__":
    run(main, ClassifierSettings.parser(__doc__).parse_args())
