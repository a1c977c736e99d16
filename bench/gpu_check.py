"""GPU check: is DRAW right on this GPU, how fast does it train, and how long would 100 epochs of
binarized MNIST at T=64 take?

One command, a few minutes, from the repository root::

    python bench/gpu_check.py

It prints, for the bmnist setting (batch 100, 28x28, read 2, write 5, enc/dec 256, z 100,
T=64):

1. the model in float32, with its glimpses compiled, and with TF32 matmuls, against itself in
   float64 on this GPU: relative differences of the loss and the gradients;
2. training images/s (forward, backward, gradient clipping, Adam; median of timed steps after
   warm-up) of each variant: plain; its glimpses compiled (draw.fast_path.compile_glimpses); the
   whole training step captured in one CUDA graph; both; both with TF32 matmuls; with compile
   and capture times and peak memory. Every variant is the one model, DrawModel;
3. the projected time of 100 epochs (50,000 training images each) for every variant, plus
   evaluation of the 20,000 validation and test images once per epoch.

A variant that fails prints its one-line error and the check goes on with the next.
"""
import argparse
import statistics
import sys
import time

import torch

from bench import train_flops_per_image
from draw.fast_path import compile_glimpses
from draw.model import DrawConfig, DrawModel, nll_bound

TRAIN_IMAGES, EVAL_IMAGES = 50_000, 20_000      # binarized MNIST: train; valid + test


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def check_agreement(cfg: DrawConfig, batch_size: int, device: torch.device):
    """The model in float32, with its glimpses compiled, and with TF32 matmuls, each against the
    model in float64 on this device: relative differences of the loss and the gradients."""
    torch.manual_seed(0)
    model = DrawModel.from_config(cfg).to(device)
    compiled = compile_glimpses(DrawModel.from_config(cfg).to(device))
    compiled.load_state_dict(model.state_dict())
    reference = DrawModel.from_config(cfg).to(device).double()
    reference.load_state_dict(model.state_dict())
    x = torch.bernoulli(torch.full((batch_size, cfg.x_dim), 0.13, device=device))
    u = torch.randn(cfg.n_iter, batch_size, cfg.z_dim, device=device)

    def loss_and_grads(m, dtype):
        c, kl = m(x.to(dtype), u.to(dtype))
        loss = nll_bound(x.to(dtype), c, kl).mean()
        return loss.detach(), torch.autograd.grad(loss, list(m.parameters()))

    loss64, g64 = loss_and_grads(reference, torch.float64)
    print(f"against the model in float64 (loss {loss64.item():.6f}):")
    for name, m, tf32 in (("plain, float32", model, False), ("compiled, float32", compiled, False),
                          ("plain, TF32 matmuls", model, True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            loss, g = loss_and_grads(m, torch.float32)
        except Exception as e:                     # report and go on
            print(f"  {name:<20} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
        print(f"  {name:<20} loss {relative_error(loss, loss64):.1e}, gradients "
              f"{max(relative_error(a, b) for a, b in zip(g, g64)):.1e} (largest relative "
              f"difference of any parameter's gradient)")


def eager_step(model: DrawModel, x: torch.Tensor):
    """One training step, as the training package takes it (its own step had not landed when
    this check was written: keep the two alike)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        c, kl = model(x)
        loss = nll_bound(x, c, kl).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
    return step


def graphed_step(model: DrawModel, x: torch.Tensor, warmup: int = 3):
    """The whole training step (forward, backward, clipping, Adam) captured in one CUDA graph,
    the recipe of PyTorch's CUDA graphs notes ("whole network capture"); replaying it launches
    every kernel of a step at once. New batches are copied into the static input `x`."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)

    def step():
        c, kl = model(x)
        loss = nll_bound(x, c, kl).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):                 # warm-up (and any compiling) off the graph
        for _ in range(warmup):
            optimizer.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def time_step(step, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def eval_seconds_per_image(model: DrawModel, batch_size: int, device, repeats: int) -> float:
    """Forward passes under no_grad, as the per-epoch evaluation runs."""
    x = torch.bernoulli(torch.full((batch_size, model.config.x_dim), 0.13, device=device))

    def run():
        with torch.no_grad():
            c, kl = model(x)
            nll_bound(x, c, kl)
    return time_step(run, repeats, warmup=2) / batch_size


def main(batch_size: int, niter: int, epochs: int, repeats: int):
    if not torch.cuda.is_available():
        print("error: no CUDA device visible to PyTorch; run this on a GPU machine",
              file=sys.stderr)
        sys.exit(1)
    device = torch.device("cuda")
    # several compiled models' glimpses: above TorchDynamo's default limit of 8 graphs per
    # function, past which it would run the steps uncompiled without saying so
    torch._dynamo.config.recompile_limit = 64
    cfg = DrawConfig(n_iter=niter, read_N=2, write_N=5)
    print(f"GPU check: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
          f"batch {batch_size}, T={niter}, read 2, write 5, enc/dec 256, z 100, "
          f"{train_flops_per_image(cfg) / 1e6:.1f} MFLOP per training image")
    check_agreement(cfg, batch_size, device)
    variants = {                                   # name: (compile, CUDA graph, TF32)
        "plain": (False, False, False),
        "compile": (True, False, False),
        "graph": (False, True, False),
        "compile + graph": (True, True, False),
        "compile + graph, TF32": (True, True, True),
    }
    eval_s = None
    print(f"{'variant':<30} {'train img/s':>11} {'x plain':>7} {'setup s':>8} {'peak MB':>8} "
          f"{'100 epochs':>11}")
    plain_ips = None
    for name, options in variants.items():
        step = None                                # the previous variant's graph and memory go
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        torch.manual_seed(0)
        model = DrawModel.from_config(cfg).to(device)
        x = torch.bernoulli(torch.full((batch_size, cfg.x_dim), 0.13, device=device))
        torch.backends.cuda.matmul.allow_tf32 = options[2]
        try:
            start = time.perf_counter()
            if options[0]:
                compile_glimpses(model)
            step = (graphed_step if options[1] else eager_step)(model, x)
            step()                                 # compiles, when asked to
            torch.cuda.synchronize()
            setup = time.perf_counter() - start
            seconds = time_step(step, repeats, warmup=2)
            memory = torch.cuda.max_memory_allocated(device) / 2 ** 20
            if eval_s is None:
                eval_s = eval_seconds_per_image(model, 500, device, repeats)
        except Exception as e:                     # report and go on: one variant may fail
            print(f"{name:<30} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
        ips = batch_size / seconds
        plain_ips = plain_ips or ips
        total = epochs * (TRAIN_IMAGES / ips + EVAL_IMAGES * eval_s)
        print(f"{name:<30} {ips:>11.0f} {ips / plain_ips:>7.2f} {setup:>8.1f} {memory:>8.0f} "
              f"{total / 60:>9.1f} m")
    if eval_s is not None:
        print(f"evaluation (plain, batch 500, no_grad): {1 / eval_s:.0f} img/s, included "
              f"above as {EVAL_IMAGES:,} images per epoch")
    print(f"100 epochs = {epochs} x {TRAIN_IMAGES:,} training images; the goal is <= 15 minutes")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=100, help="training batch size")
    p.add_argument("--niter", type=int, default=64, help="T, the number of DRAW steps")
    p.add_argument("--epochs", type=int, default=100, help="epochs of the projection")
    p.add_argument("--repeats", type=int, default=20, help="timed training steps per variant")
    main(**vars(p.parse_args()))
