#!/usr/bin/env python
"""Train DRAW (Gregor et al., 2015); checkpoints, logs and samples go to a run directory.

The flags are parsed here and handed to draw.training.run.main. Examples:

    python train-draw.py --attention=2,5 --niter=64 --lr=3e-4 --epochs=100   # the paper's run
    python train-draw.py --dataset sample --epochs 2 --niter 8                 # offline quick start
    python train-draw.py --resume bmnist-20250101-120000                      # continue a run
    torchrun --nproc_per_node=4 train-draw.py --attention=2,5 --bs 100         # 4 GPUs, 25 each

Under torchrun, --bs is the global batch size: the processes split every batch between them.
"""
import argparse

from draw.cli import ArgumentParser, run
from draw.training.run import DEFAULTS, main


def default(key: str) -> str:
    return f"(default: {DEFAULTS[key]!r}, or the resumed run's)"


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.splitlines()[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    # the classic flags; None means the classic default (or, with --resume, the run's value)
    parser.add_argument("--live-plotting", "--plot", action="store_true", default=False,
                        help="show live plots in a browser (Bokeh)")
    parser.add_argument("--name", type=str, dest="name", default=None,
                        help="name of the run directory (default: the dataset's name)")
    parser.add_argument("--dataset", type=str, dest="dataset", default=None,
                        help=f"dataset to train on {default('dataset')}")
    parser.add_argument("--epochs", type=int, dest="epochs", default=None,
                        help=f"total number of epochs to train {default('epochs')}")
    parser.add_argument("--bs", "--batch-size", type=int, dest="batch_size", default=None,
                        help=f"size of each mini-batch; under torchrun the global size, split "
                             f"between the processes {default('batch_size')}")
    parser.add_argument("--lr", "--learning-rate", type=float, dest="learning_rate", default=None,
                        help=f"Adam learning rate {default('learning_rate')}")
    parser.add_argument("--attention", "-a", type=str, default=None,
                        help="read and write window sizes READ,WRITE, e.g. 2,5; empty for no "
                             f"attention {default('attention')}")
    parser.add_argument("--niter", type=int, dest="n_iter", default=None,
                        help=f"number of glimpses T {default('n_iter')}")
    parser.add_argument("--enc-dim", type=int, dest="enc_dim", default=None,
                        help=f"encoder LSTM state dimension {default('enc_dim')}")
    parser.add_argument("--dec-dim", type=int, dest="dec_dim", default=None,
                        help=f"decoder LSTM state dimension {default('dec_dim')}")
    parser.add_argument("--z-dim", type=int, dest="z_dim", default=None,
                        help=f"latent z dimension {default('z_dim')}")
    parser.add_argument("--oldmodel", type=str, default=None,
                        help="start from the parameters of a *_model.pkl file of the same "
                             "configuration")
    # new flags
    parser.add_argument("--seed", type=int, default=None,
                        help=f"seed of initialisation, data order and noise {default('seed')}")
    parser.add_argument("--device", type=str, default="auto",
                        help="cpu, cuda, cuda:N, or auto: CUDA when available; under torchrun "
                             "each process takes cuda:LOCAL_RANK (default: auto)")
    parser.add_argument("--resume", type=str, default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last save; only --epochs, "
                             "--device, --data-dir, --no-fast, live plotting and the number of "
                             "processes may change")
    parser.add_argument("--data-dir", type=str, default=None,
                        help="where datasets live (default: $DRAW_DATA_PATH, $FUEL_DATA_PATH, "
                             "or a cache directory)")
    parser.add_argument("--run-dir", type=str, default=".", metavar="DIR",
                        help="where to create the run directory (default: .)")
    parser.add_argument("--plot-port", type=int, default=5006,
                        help="port of the live-plot server (default: 5006)")
    parser.add_argument("--grad-clip", type=float, default=None,
                        help=f"clip the gradient to this total norm {default('grad_clip')}")
    parser.add_argument("--no-fast", dest="fast", action="store_false", default=True,
                        help="train with the model's own forward pass instead of the fast "
                             "path of draw/fast.py (same results up to float rounding)")
    parser.add_argument("--subset", type=int, default=None,
                        help="train on this many randomly chosen training images, for quick "
                             "runs; valid and test stay whole (default: all)")
    run(main, parser.parse_args())
