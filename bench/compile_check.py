"""Do the compiled glimpses give a trained model's own gradients?

`torch.compile` of `DrawModel.glimpses` (draw.fast_path.compile_glimpses) is checked in the tests on
small models; a trained model, with narrow windows and large weights, is where torch 2.13's CPU
inductor once gave gradients 50-97% off while the loss stayed right (bench/README.md). This
compares, on batches of the model's own dataset, the eager model's loss and gradients with the
compiled one's, and exits 1 when they differ by more than float32 rounding. From the repository
root, a few minutes on a CPU (most of it compiling)::

    python bench/compile_check.py pretrained/bmnist-r2-w5-t64_model.pkl
    python bench/compile_check.py MODEL --inplace-buffers      # inductor's default: the bug
"""
import argparse
import sys
import time

import torch

from draw.checkpoint import load_model
from draw.datasets import get_data
from draw.fast_path import GLIMPSES_PER_CALL, compile_glimpses
from draw.model import nll_bound

TOLERANCE = 1e-3       # relative; float32 rounding over T=64 glimpses gives about 1e-4


def loss_and_grads(model, x, u):
    c, kl = model(x, u)
    loss = nll_bound(x, c, kl).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss.item(), grads


def main(model_file: str, dataset: str | None, batches: int, per_call: int,
         inplace_buffers: bool, seed: int) -> int:
    eager, ckpt = load_model(model_file)
    compiled, _ = load_model(model_file)
    compile_glimpses(compiled, per_call=per_call,
                     options={"inplace_buffers": inplace_buffers})
    dataset = dataset or ckpt.get("run", {}).get("dataset", "bmnist")
    images = get_data(dataset).train
    g = torch.Generator().manual_seed(seed)
    names = [name for name, _ in eager.named_parameters()]
    worst = dict.fromkeys(names, 0.0)
    print(f"{model_file}: T={eager.n_iter}, {dataset}, {compiled.glimpses_per_call} glimpses per "
          f"graph, inductor inplace_buffers {'on' if inplace_buffers else 'off'}")
    for i in range(batches):
        x = images[torch.randint(0, images.shape[0], (100,), generator=g)].float() / 255
        u = torch.randn(eager.noise_shape(100), generator=g)
        start = time.perf_counter()
        (loss_e, grads_e), (loss_c, grads_c) = (loss_and_grads(m, x, u) for m in (eager, compiled))
        norm_e, norm_c = (torch.linalg.vector_norm(torch.stack([g_.norm() for g_ in grads]))
                          for grads in (grads_e, grads_c))
        for name, a, b in zip(names, grads_e, grads_c):
            worst[name] = max(worst[name], ((b - a).norm() / a.norm().clamp_min(1e-30)).item())
        print(f"batch {i + 1}: loss {loss_e:.4f} eager, {loss_c:.4f} compiled; gradient norm "
              f"{norm_e:.4g} eager, {norm_c:.4g} compiled ({time.perf_counter() - start:.1f} s)",
              flush=True)
    for name in names:
        print(f"  {name:<36} largest relative difference {worst[name]:.2e}")
    bad = [name for name in names if not worst[name] < TOLERANCE]     # NaN counts as bad
    if bad:
        print(f"DISAGREE: {len(bad)} of {len(names)} gradients differ by more than {TOLERANCE:g}")
        return 1
    print(f"agree: every gradient within {TOLERANCE:g} of eager")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a *_model.pkl file")
    p.add_argument("--dataset", help="default: the one the model was trained on")
    p.add_argument("--batches", type=int, default=4, help="batches of 100 compared")
    p.add_argument("--per-call", type=int, default=GLIMPSES_PER_CALL,
                   help="glimpses per compiled graph")
    p.add_argument("--inplace-buffers", action="store_true",
                   help="inductor's default, which draw.fast_path turns off")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    sys.exit(main(a.model, a.dataset, a.batches, a.per_call, a.inplace_buffers, a.seed))
