"""GPU check: is DRAW right on this GPU, how fast does it train, and how long would 100 epochs of
binarized MNIST at T=64 take?

One command, a few minutes, from the repository root::

    python bench/gpu_check.py

It prints, for the bmnist setting (batch 100, 28x28, read 2, write 5, enc/dec 256, z 100,
T=64):

1. the model in float32, with its glimpses compiled, with TF32 matmuls, and in bf16-mixed
   precision (draw/precision.py: the forward pass under bfloat16 autocast, float32 weights),
   eager and compiled, against itself in float64 on this GPU: relative differences of the loss
   and the gradients, and whether they are within the tolerance of each precision (TOLERANCES);
2. training images/s (forward, backward, gradient clipping, Adam; median of timed steps after
   warm-up) of each variant: the naive port (bench/naive.py, the reference of issue 22); the
   model plain; its glimpses compiled (draw.fast_path.compile_glimpses); the whole training
   step captured in one CUDA graph; both; both with TF32 matmuls; bf16-mixed, eager, compiled,
   and compiled in one CUDA graph; with compile and capture times and peak memory. Every
   variant but the first is the one model, DrawModel; the eager ones train with the training
   package's step (MainLoop.step, via bench.py's training_step);
3. the projected time of 100 epochs (50,000 training images each) for every variant, plus
   evaluation of the 20,000 validation and test images once per epoch.

A variant that fails prints its one-line error and the check goes on with the next. The exit
status is 1 if any variant of part 1 is outside its tolerance.
"""
import argparse
import statistics
import sys
import time

import torch

from draw.fast_path import compile_glimpses
from draw.model import DrawConfig, DrawModel, nll_bound
from draw.precision import autocast, bf16_hardware

# bench.py of this folder (a script's folder is on sys.path): FLOP counts, training steps
import bench

TRAIN_IMAGES, EVAL_IMAGES = 50_000, 20_000      # binarized MNIST: train; valid + test


# Largest relative differences from float64, of the loss and of any parameter's gradient, that
# count as agreement, by the precision of the products. Rounding grows with the products'
# mantissa (float32 24 bits, TF32 11, bfloat16 8: unit roundoffs 6e-8, 5e-4, 4e-3) and through
# the 64 glimpses and their backward pass. Measured on a CPU at T=64 (float32; bf16-mixed with
# AMX): loss 1e-8 and 1e-5, gradients 8e-7 and 4.6e-2 (the loss is mostly the float32
# reconstruction term, eq. 9). TF32's bounds sit between, 8 times finer than bfloat16's.
TOLERANCES = {"float32": (1e-5, 1e-4), "TF32": (1e-3, 2e-2), "bf16-mixed": (1e-2, 1e-1)}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


# part 1's variants: name: (glimpses compiled, TF32 matmuls, the products' precision)
AGREEMENT = {"plain, float32": (False, False, "float32"),
             "compiled, float32": (True, False, "float32"),
             "plain, TF32 matmuls": (False, True, "TF32"),
             "plain, bf16-mixed": (False, False, "bf16-mixed"),
             "compiled, bf16-mixed": (True, False, "bf16-mixed")}


def check_agreement(cfg: DrawConfig, batch_size: int, device: torch.device,
                    variants: dict = AGREEMENT) -> bool:
    """Each variant of the model against the model in float64 on this device: relative
    differences of the loss and the gradients, and whether both are within TOLERANCES of the
    variant's precision. Returns whether every variant that ran agrees."""
    torch.manual_seed(0)
    model = DrawModel.from_config(cfg).to(device)
    models = {False: model}
    if any(compiled for compiled, _, _ in variants.values()):
        models[True] = compile_glimpses(DrawModel.from_config(cfg).to(device))
        models[True].load_state_dict(model.state_dict())
    reference = DrawModel.from_config(cfg).to(device).double()
    reference.load_state_dict(model.state_dict())
    x = torch.bernoulli(torch.full((batch_size, cfg.x_dim), 0.13, device=device))
    u = torch.randn(cfg.n_iter, batch_size, cfg.z_dim, device=device)

    def loss_and_grads(m, dtype, precision="32"):
        # the bound under the autocast of MainLoop.step, its backward pass outside it
        with autocast(precision, device):
            c, kl = m(x.to(dtype), u.to(dtype))
            loss = nll_bound(x.to(dtype), c, kl).mean()
        return loss.detach(), torch.autograd.grad(loss, list(m.parameters()))

    loss64, g64 = loss_and_grads(reference, torch.float64)
    print(f"against the model in float64 (loss {loss64.item():.6f}; agreement: loss, gradients "
          f"within {', '.join(f'{k} {a:.0e}, {b:.0e}' for k, (a, b) in TOLERANCES.items())}):")
    agree = True
    for name, (compiled, tf32, products) in variants.items():
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            loss, g = loss_and_grads(models[compiled], torch.float32,
                                     "bf16-mixed" if products == "bf16-mixed" else "32")
        except Exception as e:                     # report and go on
            print(f"  {name:<22} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
        loss_error = relative_error(loss, loss64)
        grad_error = max(relative_error(a, b) for a, b in zip(g, g64))
        ok = loss_error <= TOLERANCES[products][0] and grad_error <= TOLERANCES[products][1]
        agree &= ok
        print(f"  {name:<22} loss {loss_error:.1e}, gradients {grad_error:.1e} (largest "
              f"relative difference of any parameter's gradient): "
              f"{'agrees' if ok else 'DISAGREES'}")
    return agree


def graphed_step(model: DrawModel, x: torch.Tensor, precision: str = "32", warmup: int = 3):
    """The whole training step (forward, backward, clipping, Adam) captured in one CUDA graph,
    the recipe of PyTorch's CUDA graphs notes ("whole network capture"); replaying it launches
    every kernel of a step at once. New batches are copied into the static input `x`.

    A copy of MainLoop.step's maths, forward under `precision`'s autocast (draw/precision.py)
    included: MainLoop.step checks the loss on the host, which a CUDA graph cannot capture."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)

    def step():
        with autocast(precision, x.device):
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
    hardware = bf16_hardware(device)
    print(f"GPU check: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
          f"batch {batch_size}, T={niter}, read 2, write 5, enc/dec 256, z 100, "
          f"{bench.train_flops_per_image(cfg) / 1e6:.1f} MFLOP per training image; bfloat16 "
          f"{'native' if hardware else 'emulated (no bfloat16 tensor cores)'}")
    agree = check_agreement(cfg, batch_size, device)
    variants = {                          # name: (compile, CUDA graph, TF32, precision)
        "naive port": None,               # bench/naive.py: the reference of "x naive"
        "plain": (False, False, False, "32"),
        "compile": (True, False, False, "32"),
        "graph": (False, True, False, "32"),
        "compile + graph": (True, True, False, "32"),
        "compile + graph, TF32": (True, True, True, "32"),
        "bf16-mixed": (False, False, False, "bf16-mixed"),
        "compile, bf16-mixed": (True, False, False, "bf16-mixed"),
        "compile + graph, bf16-mixed": (True, True, False, "bf16-mixed"),
    }
    eval_s = None
    print(f"{'variant':<30} {'train img/s':>11} {'x naive':>7} {'x plain':>7} {'setup s':>8} "
          f"{'peak MB':>8} {'100 epochs':>11}")
    ips = {}
    for name, options in variants.items():
        step = None                                # the previous variant's graph and memory go
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        torch.manual_seed(0)
        model = DrawModel.from_config(cfg).to(device)
        x = torch.bernoulli(torch.full((batch_size, cfg.x_dim), 0.13, device=device))
        compiled, graphed, tf32, precision = options or (False, False, False, "32")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            start = time.perf_counter()
            if options is None:                    # the port, with the model's parameters
                step = bench.naive_training_step(model, batch_size)
            else:
                if compiled:
                    compile_glimpses(model)
                step = (graphed_step(model, x, precision) if graphed
                        else bench.training_step(model, batch_size, precision))
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
        ips[name] = batch_size / seconds
        total = epochs * (TRAIN_IMAGES / ips[name] + EVAL_IMAGES * eval_s)
        ratios = "".join(f" {ips[name] / ips[ref]:>7.2f}" if ref in ips else f" {'n/a':>7}"
                         for ref in ("naive port", "plain"))
        print(f"{name:<30} {ips[name]:>11.0f}{ratios} {setup:>8.1f} {memory:>8.0f} "
              f"{total / 60:>9.1f} m")
    if eval_s is not None:
        print(f"evaluation (plain, batch 500, no_grad): {1 / eval_s:.0f} img/s, included "
              f"above as {EVAL_IMAGES:,} images per epoch")
    print(f"100 epochs = {epochs} x {TRAIN_IMAGES:,} training images; the goal is <= 15 minutes")
    if not agree:
        print("error: a variant disagrees with float64 beyond its tolerance (part 1)",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=100, help="training batch size")
    p.add_argument("--niter", type=int, default=64, help="T, the number of DRAW steps")
    p.add_argument("--epochs", type=int, default=100, help="epochs of the projection")
    p.add_argument("--repeats", type=int, default=20, help="timed training steps per variant")
    main(**vars(p.parse_args()))
