"""Where a training step's time goes: the forward and backward pass against what follows it.

MainLoop.step is the forward pass and its backward (the glimpses, compiled with --compile),
then clipping, the non-finite check, Adam and the step norm. This times the two parts apart on
the bmnist model (read 2 / write 5, LSTMs 256, z 100, batch 100, trained windows' sigma of one
pixel), by this thread's CPU time, which other jobs change far less than wall time: it bounds
what compiling the optimizer's part, or the whole step in one graph, could save (issue 22).

Usage (from the repository root)::

    python bench/step_parts.py --niter 64 --threads 1 --compile
"""
import argparse
import statistics
import time

import torch
from torch.nn.utils import clip_grad_norm_

from draw.fast_path import compile_glimpses
from draw.model import DrawConfig, DrawModel
from draw.training.main_loop import MainLoop, adam
from draw.training.task import DrawTask


def main(niter: int, threads: int, steps: int, compile: bool) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DrawModel.from_config(DrawConfig(n_iter=niter, read_N=2, write_N=5))
    with torch.no_grad():                       # trained windows are narrow
        for head in (model.reader.readout, model.writer.z_trafo):
            head.bias[3] = 0.0                  # log sigma^2: sigma of one pixel
    if compile:
        compile_glimpses(model)
    loop = MainLoop(DrawTask(model), adam(model.parameters(), lr=1e-3))
    x = torch.bernoulli(torch.full((100, model.config.x_dim), 0.13),
                        generator=torch.Generator().manual_seed(0))
    for _ in range(3):                          # warm-up, and compiling
        loop.step(x)
    passes, rest = [], []
    for _ in range(steps):
        loop.optimizer.zero_grad(set_to_none=True)
        start = time.thread_time()
        loss, _ = loop.task.loss(x)
        loss.backward()
        middle = time.thread_time()
        # what MainLoop.step does after the backward, but its one all-reduce (a no-op here)
        norm = clip_grad_norm_(loop.params, loop.grad_clip)
        torch.isfinite(loss + norm).item()
        loop._update_and_step_norm()
        passes.append(middle - start)
        rest.append(time.thread_time() - middle)
    a, b = statistics.median(passes) * 1e3, statistics.median(rest) * 1e3
    print(f"T={niter}, {threads} thread(s), {'compiled' if compile else 'eager'}, medians of "
          f"{steps} steps: forward+backward {a:.1f} ms, clip+check+Adam+step norm {b:.1f} ms "
          f"({100 * b / (a + b):.1f}% of the step)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--niter", type=int, default=64, help="glimpses T")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU time is this "
                                                          "thread's: 1 is exact)")
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--compile", action="store_true", help="compile the glimpses first")
    main(**vars(p.parse_args()))
