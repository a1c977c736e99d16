"""DRAW throughput in one run: the model's training paths side by side with the naive port.

For each T it prints training and sampling images/s of every path, its ratio to the naive port
(bench/naive.py, the paper's equations typed in directly: issue 22's reference) and to the
default path ("plain": the model as training runs it), the FLOPs of a training step, the matmul
rate this machine reaches on DRAW's shapes in float32 and in bfloat16, the share of the ceiling
of its own precision each path reaches, and peak memory. Paths are timed in turn within every
repeat, so a machine shared with other jobs slows them alike: the ratios of one run are what to
compare, not the absolute numbers of two runs. On a loaded machine, `--clock cpu --threads 1`
times each step by the CPU time of this thread, which other jobs change far less than wall time.

Paths: the naive port, with the plain model's initial parameters (its own training step: the
bound, backward, clipping at 10, PyTorch's default Adam); then the one model, DrawModel, trained
by the training package's step (MainLoop.step on a DrawTask: bound, backward, clipping at 10,
the runs' Adam): plain (denormal floats computed, PyTorch's default), plain with denormals
flushed (draw.fast_path.set_flush_denormal), with --compile the compiled glimpses
(draw.fast_path.compile_glimpses), plain and compiled in bf16-mixed precision
(draw/precision.py: the forward pass under bfloat16 autocast, float32 weights and Adam), and
plain and compiled with --matmul-precision medium ("bf32": float32 products whose inputs the
CPU's oneDNN rounds to bfloat16 inside the kernel, everything else float32; TF32 on a GPU). On
CPUs the naive port runs with denormals flushed too: its filterbanks' far tails are denormal
floats, which DrawModel's filterbank never makes, and that row tells their share apart.

Usage (from the repository root)::

    python bench/bench.py            # a few minutes on 2 idle CPU cores
    python bench/bench.py --quick    # a short run
"""
import argparse
import ctypes
import statistics
import time

import torch

from draw.fast_path import compile_glimpses
from draw.model import DrawConfig, DrawModel
from draw.training.main_loop import MainLoop
from draw.training.task import DrawTask

# bench/naive.py: a script's folder is on sys.path (and bench/ on pytest's: pyproject.toml)
import naive


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


def matmul_rate(cfg: DrawConfig, batch: int, device: torch.device, repeats: int,
                clock=time.perf_counter, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of matmuls of DRAW's shapes with `dtype` operands: each linear's forward product
    and its two backward products, timed together; the median of `repeats`."""
    operands = []
    for i, o in linear_shapes(cfg):
        a, w, g = (torch.randn(*s, device=device, dtype=dtype)
                   for s in ((batch, i), (o, i), (batch, o)))
        operands += [(a, w.t()), (g, w), (g.t(), a)]
    flops = sum(2 * x.shape[0] * x.shape[1] * y.shape[1] for x, y in operands)

    def run():
        for x, y in operands:
            x @ y
    return flops / median_seconds(run, repeats, warmup=3, device=device, clock=clock) / 1e9


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def median_seconds(fn, repeats: int, warmup: int, device: torch.device,
                   clock=time.perf_counter) -> float:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        synchronize(device)
        times.append(clock() - start)
    return statistics.median(times)


def interleaved_medians(fns: dict, repeats: int, warmup: int, device: torch.device,
                        clock=time.perf_counter) -> dict:
    """Median seconds of each function, timing them in turn within every repeat."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            synchronize(device)
            times[name].append(clock() - start)
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


def run_adam(model: DrawModel) -> tuple[torch.optim.Optimizer, str]:
    """Adam as the training runs of the `draw` being timed make it: draw.training.main_loop.adam
    (fused) where that tree has it, else PyTorch's default Adam, as older trees' runs had."""
    try:
        from draw.training.main_loop import adam
    except ImportError:
        return torch.optim.Adam(model.parameters(), lr=1e-3), "Adam"
    return adam(model.parameters(), lr=1e-3), "fused Adam"


def binary_batch(model: torch.nn.Module, batch_size: int, x_dim: int) -> torch.Tensor:
    """A fixed batch (batch_size, x_dim) of binary images with 13% of pixels on (about MNIST's
    share), on the model's device: the same batch for every path."""
    device = next(model.parameters()).device
    return torch.bernoulli(torch.full((batch_size, x_dim), 0.13, device=device),
                           generator=torch.Generator(device).manual_seed(0))


def training_step(model: DrawModel, batch_size: int, precision: str = "32", dist=None,
                  matmul_precision: str = "highest"):
    """One step as training takes it: the training package's MainLoop.step on a DrawTask, with
    the runs' Adam, `precision` ("32" or "bf16-mixed") and `matmul_precision` (draw/precision.py);
    under DDP with `dist` (draw.training.distributed.Distributed), this rank's share of the
    global batch."""
    # trees from before bf16-mixed and --matmul-precision (bench/ab.py times them with this)
    # take neither
    options = {} if precision == "32" else {"precision": precision}
    if matmul_precision != "highest":
        options["matmul_precision"] = matmul_precision
    loop = MainLoop(DrawTask(model, dist), run_adam(model)[0], **options)
    x = binary_batch(model, batch_size, model.config.x_dim)
    return lambda: loop.step(x)


def naive_training_step(model: DrawModel, batch_size: int):
    """The naive port's training step (bench/naive.py), from `model`'s config and parameters,
    on the same kind of batch as `training_step`'s."""
    port = naive.NaiveDraw.from_config(model.config).to(next(model.parameters()).device)
    naive.load_draw_state(port, model.state_dict())
    return naive.training_step(port, binary_batch(port, batch_size, model.config.x_dim))


def with_flush(fn, flush: bool):
    """fn run with denormal floats flushed to zero or computed (a process-wide CPU setting, so
    every path sets its own before each call)."""
    def run():
        torch.set_flush_denormal(flush)
        return fn()
    return run


def narrow_windows(model: DrawModel, sigma: float):
    """Set both attention heads' sigma bias (eq. 21) to `sigma` pixels. Windows at the
    initialisation are wide (3.5 and 2.8 pixels), so their filters have no far tails; trained
    windows are narrow, and the tails of narrow filters are where denormal floats come from."""
    with torch.no_grad():
        for head in (getattr(model.reader, "readout", None),
                     getattr(model.writer, "z_trafo", None)):
            if head is not None:
                head.bias[3] = 2 * torch.log(torch.tensor(sigma))       # log sigma^2


# what each path computes its products in, for the ceiling it is measured against
LABELS = {"32": "fp32", "bf16-mixed": "bf16", "medium": "bf32"}


def bench_one(T: int, args, device: torch.device) -> dict:
    cfg = DrawConfig(n_iter=T, read_N=args.read_N, write_N=args.write_N, enc_dim=args.enc_dim,
                     dec_dim=args.dec_dim, z_dim=args.z_dim,
                     learned_initial_state=args.learned_initial_state)
    clock = CLOCKS[args.clock]

    def model():
        torch.manual_seed(args.seed)
        m = DrawModel.from_config(cfg).to(device)
        if args.sigma:
            narrow_windows(m, args.sigma)
        return m

    def step(m, precision="32"):
        if precision == "medium":
            return training_step(m, args.batch_size, matmul_precision="medium")
        return training_step(m, args.batch_size, precision)
    plain = model()
    # the naive port first: the reference of every ratio, with the plain model's parameters
    train = {"naive port": with_flush(naive_training_step(model(), args.batch_size), False)}
    if device.type == "cpu":
        # its filterbanks' far tails are denormal floats, which x86 CPUs compute slowly: this
        # row tells that share of the ratios apart
        train["naive port, flushed"] = with_flush(
            naive_training_step(model(), args.batch_size), True)
    train["plain"] = with_flush(step(plain), False)
    # sampling only where a path samples differently: the naive port has no sampler, compiled
    # models sample through the uncompiled `decode`, autocast covers the training step only
    sample = {"plain": with_flush(lambda: plain.sample(args.batch_size), False)}
    if device.type == "cpu":
        flushed = model()
        train["plain, flushed"] = with_flush(step(flushed), True)
        sample["plain, flushed"] = with_flush(lambda: flushed.sample(args.batch_size), True)
    if args.compile:
        train["compiled"] = with_flush(step(compile_glimpses(model())), False)
    if args.bf16:
        train["bf16-mixed"] = with_flush(step(model(), "bf16-mixed"), False)
        if args.compile:
            train["bf16-mixed, compiled"] = with_flush(
                step(compile_glimpses(model()), "bf16-mixed"), False)
        train["matmul medium"] = with_flush(step(model(), "medium"), False)
        if args.compile:
            train["matmul medium, compiled"] = with_flush(
                step(compile_glimpses(model()), "medium"), False)
    first_call = {}
    for name in [n for n in train if n.endswith("compiled")]:
        start = time.perf_counter()
        train[name]()                                 # the first call compiles
        synchronize(device)
        first_call[name] = time.perf_counter() - start
    train_s = interleaved_medians(train, args.repeats, args.warmup, device, clock)
    sample_s = interleaved_medians(sample, args.repeats, args.warmup, device, clock)
    torch.set_flush_denormal(False)
    return {"cfg": cfg, "train": train_s, "sample": sample_s, "first_call": first_call,
            "precision": {name: "bf16-mixed" if name.startswith("bf16") else
                          "medium" if name.startswith("matmul medium") else "32"
                          for name in train},
            "memory": {name: peak_memory_mb(fn, device) for name, fn in train.items()}}


def main(quick: bool, niters: str, batch_size: int, threads: int | None, device: str,
         repeats: int | None, warmup: int | None, compile: bool, bf16: bool, clock: str,
         sigma: float,
         read_N: int, write_N: int, enc_dim: int, dec_dim: int, z_dim: int, seed: int,
         learned_initial_state: bool = True):
    args = argparse.Namespace(**locals())
    args.repeats = repeats or (3 if quick else 7)
    args.warmup = warmup or (1 if quick else 2)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads:
        torch.set_num_threads(threads)
    Ts = [int(t) for t in niters.split(",")]
    shapes = DrawConfig(read_N=read_N, write_N=write_N, enc_dim=enc_dim, dec_dim=dec_dim,
                        z_dim=z_dim)
    rates = {"32": matmul_rate(shapes, batch_size, dev, args.repeats, CLOCKS[clock])}
    if bf16:
        rates["bf16-mixed"] = matmul_rate(shapes, batch_size, dev, args.repeats, CLOCKS[clock],
                                          torch.bfloat16)
        from draw.precision import float32_matmul     # here: as draw.precision below
        with float32_matmul("medium"):
            rates["medium"] = matmul_rate(shapes, batch_size, dev, args.repeats, CLOCKS[clock])
    where = f"{dev.type}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda"
                             else f", {torch.get_num_threads()} threads")
    windows = f"window sigma {sigma} px" if sigma else "windows as initialised"
    adam = run_adam(torch.nn.Linear(1, 1))[1]
    # imported here, not above: bench/ab.py loads this file with older trees' draw on the path
    from draw.precision import bf16_hardware
    hardware = bf16_hardware(dev)
    precisions = "float32" + (f", bf16-mixed and matmul medium (bfloat16 "
                              f"{'on ' + hardware if hardware else 'emulated'})" if bf16 else "")
    print(f"DRAW benchmark: {where}, {precisions}, batch {batch_size}, "
          f"{shapes.height}x{shapes.width}, read {read_N}, write {write_N}, enc/dec "
          f"{enc_dim}/{dec_dim}, z {z_dim}, {windows}, {adam}; {clock} clock, medians of "
          f"{args.repeats} after {args.warmup} warm-up")
    print("matmul rate on DRAW's shapes: " + ", ".join(
        f"{LABELS[p]} {rate:.1f} GFLOP/s" for p, rate in rates.items()))
    print(f"{'T':>3} {'path':<23} {'prec':>4} {'train img/s':>11} {'x naive':>7} {'x plain':>7} "
          f"{'sample img/s':>12} {'x plain':>7} {'MFLOP/img':>9} {'% ceiling':>9} "
          f"{'peak MB':>8}")
    for T in Ts:
        r = bench_one(T, args, dev)
        flops = train_flops_per_image(r["cfg"])
        ceilings = {p: rate * 1e9 / flops for p, rate in rates.items()}       # img/s
        for name, seconds in r["train"].items():
            precision = r["precision"][name]
            train_ips = batch_size / seconds
            if name in r["sample"]:
                sample = (f"{batch_size / r['sample'][name]:>12.1f} "
                          f"{r['sample']['plain'] / r['sample'][name]:>7.2f}")
            else:
                sample = f"{'n/a':>12} {'n/a':>7}"
            mem = r["memory"][name]
            print(f"{T:>3} {name:<23} {LABELS[precision]:>4} {train_ips:>11.1f} "
                  f"{r['train']['naive port'] / seconds:>7.2f} "
                  f"{r['train']['plain'] / seconds:>7.2f} {sample} {flops / 1e6:>9.1f} "
                  f"{100 * train_ips / ceilings[precision]:>8.1f}% "
                  f"{'n/a' if mem is None else f'{mem:.0f}':>8}")
        print(f"{T:>3} ceiling " + ", ".join(
            f"{LABELS[p]} {c:.1f} img/s" for p, c in ceilings.items()) + "".join(
            f"; {name}'s first call {s:.1f} s" for name, s in r["first_call"].items()))


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
    p.add_argument("--compile", action="store_true",
                   help="also time draw.fast_path.compile_glimpses (compiles for minutes on a CPU)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="leave out the bf16-mixed and matmul medium rows and their ceilings")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or this thread's CPU time (use with --threads 1 on a "
                        "loaded machine)")
    p.add_argument("--sigma", type=float, default=1.0,
                   help="both windows' initial sigma in pixels, narrow as in trained models; "
                        "0 keeps the initialisation's wide windows")
    p.add_argument("--attention", default="2,5", metavar="READ,WRITE",
                   help="read and write window sizes, as train-draw.py's --attention (both: "
                        "the naive port has no attention-free path)")
    p.add_argument("--enc-dim", type=int, default=256, help="encoder LSTM size")
    p.add_argument("--dec-dim", type=int, default=256, help="decoder LSTM size")
    p.add_argument("--z-dim", type=int, default=100, help="latent size")
    p.add_argument("--seed", type=int, default=0, help="initial weights")
    p.add_argument("--no-learned-initial-state", dest="learned_initial_state",
                   action="store_false",
                   help="c_0, h_0^enc, h_0^dec at zero, as the models timed before 2026-12-06")
    args = vars(p.parse_args())
    # imported here, not above, as draw.precision in `main`
    from draw.errors import DrawError
    from draw.training.settings import parse_attention
    try:
        args["read_N"], args["write_N"] = parse_attention(args.pop("attention"))
    except DrawError as e:
        p.error(str(e))
    if args["read_N"] is None:
        p.error("--attention: expected READ,WRITE such as 2,5")
    main(**args)
