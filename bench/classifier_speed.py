"""Training images/s of the attention classifier (DRAW section 4.1, Table 1), eager against its
glimpses compiled (issue 22, item 3).

Both paths take the training step of train-classifier.py: MainLoop.step on a ClassifyTask with
the classifier's Adam groups (the read head at --read-lr) and the gradient clipped, on a fixed
batch of 100x100 cluttered MNIST composed from the shipped sample's digits. The model, batch size
and rates are configs/cluttered-mnist-8.toml's, except T. "compiled" is the same model with
`draw.fast_path.compile_glimpses` (inductor, 8 glimpses per graph), as a run compiles with
--compile. Its first call compiles, timed apart by the wall clock; after warm-up the two paths'
steps are timed in turn within every repeat (bench/bench.py's interleaved_medians), so a machine
shared with other jobs slows them alike: compare the ratios of one run. On a loaded machine,
`--threads 1 --clock cpu` times each step by this thread's CPU time, which other jobs change far
less than wall time.

The last line per T says after how many training steps compiling repays itself: the first
call's time beyond a compiled step, over what a step saves. A run also compiles its evaluation
graphs (no gradients) and the picture's (8 images), which this leaves out.

Usage (from the repository root)::

    python bench/classifier_speed.py                          # T = 4 and 8
    python bench/classifier_speed.py --threads 1 --clock cpu  # on a shared machine
    python bench/classifier_speed.py --quick                  # fewer repeats
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch

from draw.classifier import AttentionClassifier
from draw.datasets import get_data
from draw.datasets.scenes import cluttered_recipe, compose
from draw.fast_path import compile_glimpses
from draw.training.classify import CLASSIFIER, ClassifierSettings, ClassifyTask, classifier_adam
from draw.training.main_loop import MainLoop

# bench/bench.py, for its clocks and interleaved timing (a script's folder is on sys.path)
import bench

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cluttered-mnist-8.toml"


def cluttered_batch(batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size 100x100 cluttered images (B, 10000) in [0, 1], composed from the shipped
    sample's training digits (no download), and random labels (B,): the speed of a step does
    not depend on what the labels are."""
    digits = get_data("sample").train.numpy().reshape(-1, 28, 28)            # (4000, 28, 28)
    rng = np.random.default_rng(seed)
    recipe = cluttered_recipe(len(digits), rng)
    x = torch.from_numpy(compose(digits, recipe, np.arange(batch_size))).float() / 255
    return x, torch.from_numpy(rng.integers(0, 10, batch_size))


def training_step(settings: ClassifierSettings, batch, compiled: bool, seed: int):
    """One training step of a fresh classifier, as train-classifier.py takes it."""
    torch.manual_seed(seed)
    model = AttentionClassifier.from_config(CLASSIFIER.model_config(settings, (1, 100, 100)))
    if compiled:
        compile_glimpses(model)
    loop = MainLoop(ClassifyTask(model), classifier_adam(model, settings),
                    grad_clip=settings.grad_clip)
    return lambda: loop.step(batch)


def main(quick: bool, threads: int | None, clock: str, niters: str, batch_size: int | None,
         repeats: int | None, warmup: int | None, seed: int):
    repeats = repeats or (3 if quick else 9)
    warmup = warmup or (1 if quick else 2)
    if threads:
        torch.set_num_threads(threads)
    given = ClassifierSettings.given({"config": str(CONFIG), "batch_size": batch_size})
    base = ClassifierSettings(**given)
    batch = cluttered_batch(base.batch_size, seed)
    cpu = torch.device("cpu")
    print(f"classifier training speed: cpu, {torch.get_num_threads()} threads, batch "
          f"{base.batch_size} of 100x100, read {base.attention}x{base.attention}, LSTM "
          f"{base.enc_dim}, Adam with the read head at x{base.read_lr:g}; {clock} clock, "
          f"medians of {repeats} after {warmup} warm-up")
    print(f"{'T':>3} {'path':<9} {'train img/s':>11} {'x eager':>7} {'first call s':>12}")
    for T in (int(t) for t in niters.split(",")):
        settings = ClassifierSettings(**{**given, "n_iter": T})
        steps = {"eager": training_step(settings, batch, False, seed),
                 "compiled": training_step(settings, batch, True, seed)}
        start = time.perf_counter()
        steps["compiled"]()                                   # the first call compiles
        first_call = time.perf_counter() - start
        seconds = bench.interleaved_medians(steps, repeats, warmup, cpu, bench.CLOCKS[clock])
        for name, s in seconds.items():
            first = f"{first_call:>12.1f}" if name == "compiled" else f"{'':>12}"
            print(f"{T:>3} {name:<9} {base.batch_size / s:>11.1f} "
                  f"{seconds['eager'] / s:>7.2f} {first}")
        saved = seconds["eager"] - seconds["compiled"]
        if saved > 0:
            repaid = (first_call - seconds["compiled"]) / saved
            print(f"{T:>3} compiling repays itself after about {repaid:,.0f} steps "
                  f"({repaid * T:,.0f} glimpses)")
        else:
            print(f"{T:>3} compiling never repays itself: the compiled step is not faster")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few repeats: a short, rougher run")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: PyTorch's choice)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or this thread's CPU time (use with --threads 1 on a "
                        "loaded machine)")
    p.add_argument("--niters", type=str, default="4,8",
                   help="comma-separated numbers of glimpses T (the paper's Table 1: 4 and 8)")
    p.add_argument("--bs", dest="batch_size", type=int, default=None,
                   help="images per step (default: the config's, 100)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed steps per path (default 9, 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps per path first (default 2, 1 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="initial weights and the batch")
    main(**vars(p.parse_args()))
