"""DRAW throughput in one run: the fast path (draw.fast) against the plain path (DrawModel).

For each T it prints training and sampling images/s of both paths, their ratio, the FLOPs of a
training step, the matmul rate this machine reaches on DRAW's shapes, the share of that ceiling
each path reaches, and peak memory. Paths are timed in turn within every repeat, so a machine
shared with other jobs slows them alike: the ratios of one run are what to compare, not the
absolute numbers of two runs.

Usage (from the repository root)::

    python bench/bench.py            # about 2 minutes on 2 CPU cores
    python bench/bench.py --quick    # a short run
"""
import argparse
import ctypes
import statistics
import time

import torch

from draw.fast import accelerate
from draw.model import DrawConfig, DrawModel, nll_bound


def linear_shapes(cfg: DrawConfig) -> list[tuple[int, int]]:
    """(in, out) of every per-step matrix product of DRAW, attention glimpses aside."""
    R = 2 * cfg.channels * cfg.read_N ** 2 if cfg.read_N else 2 * cfg.x_dim
    write = 5 + cfg.channels * cfg.write_N ** 2 if cfg.write_N else cfg.x_dim
    shapes = [(R + cfg.dec_dim + cfg.enc_dim, 4 * cfg.enc_dim),       # encoder LSTM (eq. 5)
              (cfg.z_dim + cfg.dec_dim, 4 * cfg.dec_dim),             # decoder LSTM (eq. 7)
              (cfg.enc_dim, 2 * cfg.z_dim),                           # Q mean, log sigma (eq. 1)
              (cfg.dec_dim, write)]                                   # write heads (eqs. 21, 28)
    if cfg.read_N:
        shapes.append((cfg.dec_dim, 5))                               # read head (eq. 21)
    return shapes


def train_flops_per_image(cfg: DrawConfig) -> float:
    """Matmul FLOPs of one training step per image: forward, then backward at twice that."""
    macs = sum(i * o for i, o in linear_shapes(cfg))
    C, H, W = cfg.channels, cfg.height, cfg.width
    if cfg.read_N:                                                    # F_Y x F_X^T (eq. 27)
        N = cfg.read_N
        macs += N * H * 2 * C * W + 2 * C * N * W * N
    if cfg.write_N:                                                   # F_Y^T w F_X (eq. 29)
        N = cfg.write_N
        macs += C * N * N * W + H * N * C * W
    return 3 * 2 * macs * cfg.n_iter


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(cfg: DrawConfig, batch: int, device: torch.device, repeats: int) -> float:
    """GFLOP/s of float32 matmuls of DRAW's shapes: each linear's forward product and its two
    backward products, timed together; the median of `repeats`."""
    operands = []
    for i, o in linear_shapes(cfg):
        a, w, g = (torch.randn(*s, device=device) for s in ((batch, i), (o, i), (batch, o)))
        operands += [(a, w.t()), (g, w), (g.t(), a)]
    flops = sum(2 * x.shape[0] * x.shape[1] * y.shape[1] for x, y in operands)

    def run():
        for x, y in operands:
            x @ y
    return flops / median_seconds(run, repeats, warmup=3, device=device) / 1e9


def median_seconds(fn, repeats: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(fns: dict, repeats: int, warmup: int, device: torch.device) -> dict:
    """Median seconds of each function, timing them in turn within every repeat."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory_mb(fn, device: torch.device) -> float | None:
    """Memory a call of fn needs at its peak, in MB, or None where it cannot be measured.

    On CUDA: the allocator's peak. On Linux CPUs: the growth of the peak resident set size,
    after returning freed heap memory to the system and resetting the peak (clear_refs 5).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - base) / 1024
    except (OSError, AttributeError, ValueError):
        return None


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ValueError(f"no {field} in /proc/self/status")


def training_step(model: DrawModel, forward, x: torch.Tensor):
    """One step as training takes it: bound, backward, clip to norm 10, Adam."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        c, kl = forward(x)
        loss = nll_bound(x, c, kl).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
    return step


def with_denormals(fn):
    """Run fn with denormal floats computed, not flushed (how the plain path runs by default)."""
    def run():
        torch.set_flush_denormal(False)
        try:
            fn()
        finally:
            torch.set_flush_denormal(True)
    return run


def bench_one(T: int, args, device: torch.device) -> dict:
    cfg = DrawConfig(n_iter=T, read_N=args.read_N, write_N=args.write_N, enc_dim=args.enc_dim,
                     dec_dim=args.dec_dim, z_dim=args.z_dim)
    torch.manual_seed(args.seed)
    plain = DrawModel.from_config(cfg).to(device)
    twin = DrawModel.from_config(cfg).to(device)
    twin.load_state_dict(plain.state_dict())
    start = time.perf_counter()
    fast = accelerate(twin, compile=args.compile, flush_denormal=not args.keep_denormals)
    x = torch.bernoulli(torch.full((args.batch_size, cfg.x_dim), 0.13, device=device))
    train = {"plain": training_step(plain, plain, x), "fast": training_step(twin, fast, x)}
    sample = {"plain": lambda: plain.sample(args.batch_size),
              "fast": lambda: fast.sample(args.batch_size)}
    train["fast"]()                     # the first call compiles, when asked to
    synchronize(device)
    first_call = time.perf_counter() - start
    if device.type == "cpu" and not args.keep_denormals:
        train["plain, denormals"] = with_denormals(train["plain"])
        sample["plain, denormals"] = with_denormals(sample["plain"])
    train_s = interleaved_medians(train, args.repeats, args.warmup, device)
    sample_s = interleaved_medians(sample, args.repeats, args.warmup, device)
    return {"cfg": cfg, "train": train_s, "sample": sample_s, "first_call": first_call,
            "memory": {name: peak_memory_mb(fn, device) for name, fn in train.items()}}


def main(quick: bool, niters: str, batch_size: int, threads: int | None, device: str,
         repeats: int | None, warmup: int | None, compile: bool, keep_denormals: bool,
         read_N: int, write_N: int, enc_dim: int, dec_dim: int, z_dim: int, seed: int):
    args = argparse.Namespace(**locals())
    args.repeats = repeats or (3 if quick else 7)
    args.warmup = warmup or (1 if quick else 2)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads:
        torch.set_num_threads(threads)
    Ts = [int(t) for t in niters.split(",")]
    rate = matmul_rate(DrawConfig(read_N=read_N, write_N=write_N, enc_dim=enc_dim,
                                  dec_dim=dec_dim, z_dim=z_dim), batch_size, dev, args.repeats)
    where = f"{dev.type}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda"
                             else f", {torch.get_num_threads()} threads")
    print(f"DRAW benchmark: {where}, float32, batch {batch_size}, 28x28, read {read_N}, "
          f"write {write_N}, enc/dec {enc_dim}/{dec_dim}, z {z_dim}, compile={compile}; "
          f"medians of {args.repeats} after {args.warmup} warm-up")
    print(f"matmul rate on DRAW's shapes: {rate:.1f} GFLOP/s")
    header = (f"{'T':>3} {'path':<17} {'train img/s':>11} {'x plain':>7} {'sample img/s':>12} "
              f"{'x plain':>7} {'MFLOP/img':>9} {'% ceiling':>9} {'peak MB':>8}")
    print(header)
    for T in Ts:
        r = bench_one(T, args, dev)
        flops = train_flops_per_image(r["cfg"])
        ceiling = rate * 1e9 / flops
        for name in r["train"]:
            train_ips = batch_size / r["train"][name]
            sample_ips = batch_size / r["sample"][name]
            mem = r["memory"][name]
            print(f"{T:>3} {name:<17} {train_ips:>11.1f} "
                  f"{r['train']['plain'] / r['train'][name]:>7.2f} {sample_ips:>12.1f} "
                  f"{r['sample']['plain'] / r['sample'][name]:>7.2f} {flops / 1e6:>9.1f} "
                  f"{100 * train_ips / ceiling:>8.1f}% "
                  f"{'n/a' if mem is None else f'{mem:.0f}':>8}")
        print(f"{T:>3} ceiling {ceiling:.1f} img/s; fast path's first call (with any compile) "
              f"{r['first_call']:.1f} s")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few repeats: a short, rougher run")
    p.add_argument("--niters", type=str, default="10,64", help="comma-separated T values")
    p.add_argument("--batch-size", type=int, default=100, help="images per step")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: PyTorch's choice)")
    p.add_argument("--device", type=str, default=None, help="cpu or cuda (default: cuda if any)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per path (default 7, 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed repeats first (default 2, 1 with --quick)")
    p.add_argument("--compile", action="store_true", help="accelerate(..., compile=True)")
    p.add_argument("--keep-denormals", action="store_true",
                   help="do not flush denormal floats on CPU (accelerate's flush_denormal=False)")
    p.add_argument("--read-N", type=int, default=2, help="read window size")
    p.add_argument("--write-N", type=int, default=5, help="write window size")
    p.add_argument("--enc-dim", type=int, default=256, help="encoder LSTM size")
    p.add_argument("--dec-dim", type=int, default=256, help="decoder LSTM size")
    p.add_argument("--z-dim", type=int, default=100, help="latent size")
    p.add_argument("--seed", type=int, default=0, help="initial weights")
    main(**vars(p.parse_args()))
