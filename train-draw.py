#!/usr/bin/env python
"""Train DRAW (Gregor et al., 2015); checkpoints, logs and samples go to a run directory.

The flags (draw/training/settings.py, DrawSettings) are parsed here and handed to draw.training.draw_job.main.
Examples:

    python train-draw.py --attention=2,5 --niter=64 --lr=3e-4 --epochs=100   # the paper's run
    python train-draw.py --config configs/NAME.toml --epochs 10               # flags override it
    python train-draw.py --dataset sample --epochs 2 --niter 8                 # offline quick start
    python train-draw.py --resume bmnist-20250101-120000                      # continue a run
    torchrun --nproc_per_node=4 train-draw.py --attention=2,5 --bs 100         # 4 GPUs, 25 each

Under torchrun, --bs is the global batch size: the processes split every batch between them.
A resumed run keeps its settings; it may change --epochs (the total to reach), the device,
directories, live plotting and the number of processes.
"""
import draw.startup  # noqa: F401  (first: a Ctrl-C while torch loads is one line)

from draw.cli import run
from draw.training.draw_job import main
from draw.training.settings import DrawSettings

if __name__ == "__main__":
    run(main, DrawSettings.parser(__doc__).parse_args())
