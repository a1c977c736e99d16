"""Before/after: the training step of two source trees, timed step by step in turn.

bench.py compares paths of one tree in one process; this compares two trees (say the draw/ of
an older commit and the working tree), each in its own worker process with the tree first on
PYTHONPATH. The workers take one step each in turn, so load from other jobs falls on both
alike, and every pair of steps gives one ratio: the median of those ratios is far steadier on a
shared machine than the ratio of two separate runs (bench/README.md). Times are CPU time of the
worker's thread (--clock cpu, the default, with one thread) or wall time (--clock wall, e.g.
with --threads 2 on an idle machine: only one worker runs at a time).

A tree is timed with its own training step: MainLoop.step on a DrawTask where the tree has
one (bench.py's `training_step`), and for trees from before issue 11, which trained through
their hand-fused draw/fast.py by default (a module this tree no longer has), that tree's
MainLoop.step through its fast path, with the Adam those runs used. Options after a colon change how a tree is timed:

    FOLDER:compile              its glimpses compiled (draw.fast_path.compile_glimpses; the
                                first call, which compiles, is not timed)
    FOLDER:compile=N            the same with N glimpses per graph (the tree's default: 8)
    FOLDER:bf16-mixed           its step in bf16-mixed precision (draw/precision.py)
    FOLDER:compile,bf16-mixed   both
    FOLDER:naive                not the tree's model but the naive port (bench/naive.py) with
                                that tree's DrawModel's initial parameters: issue 22's reference
    FOLDER:matmul-medium        its step with --matmul-precision medium (bfloat16 inputs to the
                                float32 products, draw/precision.py)
    FOLDER:no-attention         the model without attention (eqs. 17-18) instead of read 2,
                                write 5 (combines with the others but naive)
    FOLDER:zero-start           c_0, h_0^enc, h_0^dec at zero, not learned (section 2.2), as
                                every tree from before 2026-12-06 has them: compare such a
                                tree with this one's zero-start model (combines with the others)
    FOLDER:ddp                  the batch split across 2 processes, each with half the threads,
                                through DDP (gloo), as `torchrun --nproc_per_node=2` trains;
                                a step's time is the slower rank's (combines with the others
                                but naive)

Usage (from the repository root)::

    git archive <commit> draw | tar -x -C /tmp/before
    python bench/ab.py /tmp/before . --niters 10,64 --steps 30
    git archive 68d1897 draw | tar -x -C /tmp/fast     # the last tree with draw/fast.py
    python bench/ab.py /tmp/fast . .:compile --threads 2 --clock wall
    python bench/ab.py .:naive . .:compile .:bf16-mixed .:compile,bf16-mixed --niters 64 \
        --threads 2 --clock wall       # speed-ups over the naive port, paired
    python bench/ab.py .:naive .:compile .:compile,ddp --niters 64 --threads 2 --clock wall
"""
import argparse
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
OPTIONS = ("compile", "bf16-mixed", "naive", "ddp", "matmul-medium", "no-attention",
           "zero-start")
DDP_RANKS = 2


def glimpses_per_graph(option: str) -> int | None:
    """N of a "compile=N" option (N > 0), else None."""
    name, _, n = option.partition("=")
    return int(n) if name == "compile" and n.isdecimal() and int(n) > 0 else None


def parse_tree(tree: str) -> tuple[str, list[str]]:
    """FOLDER[:OPTION,...] -> (FOLDER, [OPTION, ...]); SystemExit for options it does not know."""
    folder, colon, options = tree.partition(":")
    options = options.split(",") if colon else []
    unknown = [o for o in options if o not in OPTIONS and glimpses_per_graph(o) is None]
    if unknown or ("naive" in options and len(options) > 1):
        sys.exit(f"error: {tree}: options after the colon are {', '.join(OPTIONS)}, "
                 f"compile=N (naive alone)")
    return folder, options


def legacy_fast_step(model, batch_size: int):
    """The training step of a tree from before issue 11: its MainLoop.step through that tree's
    draw/fast.py (gone since), with PyTorch's default Adam, as `train-draw.py` ran it then."""
    import torch
    from draw.fast import accelerate
    from draw.training.main_loop import MainLoop

    loop = MainLoop(model, torch.optim.Adam(model.parameters(), lr=1e-3), list,
                    torch.Generator(), fast=accelerate(model))
    x = torch.bernoulli(torch.full((batch_size, model.config.x_dim), 0.13))
    return lambda: loop.step(x)


def worker(T: int, clock: str, threads: int, options: list[str]) -> None:
    """Build the model and the tree's own training step with this process's `draw` (or the
    naive port of that model), then time one step per line read from stdin, printing its
    seconds. With "ddp", this process is the rank that torchrun's variables say, and its step
    the MainLoop.step of a DDP run: this rank's slice of the batch, gradients all-reduced."""
    import torch
    from draw.model import DrawConfig, DrawModel

    torch.set_num_threads(threads)
    dist = None
    if "ddp" in options:
        from draw.training.distributed import init_distributed
        dist, _ = init_distributed(torch.device("cpu"))
    torch.manual_seed(0)
    attention = {} if "no-attention" in options else {"read_N": 2, "write_N": 5}
    # trees from before 2026-12-06 know no learned_initial_state: theirs is always zero
    start = {"learned_initial_state": False} if "zero-start" in options else {}
    model = DrawModel.from_config(DrawConfig(n_iter=T, **attention, **start))
    if attention:
        narrow_windows(model, 1.0)
    # bench.py of this script's folder, imported only on the paths that use it: it imports
    # modules of the tree's draw that trees from before issue 11 lack
    if "naive" in options:
        import bench
        step = bench.naive_training_step(model, 100)
    elif importlib.util.find_spec("draw.fast") is not None:
        if options:
            sys.exit(f"error: :{','.join(options)} needs a tree without draw/fast.py (one with "
                     f"compile_glimpses, and draw/precision.py for bf16-mixed)")
        step = legacy_fast_step(model, 100)
    else:
        import bench
        per_call = [n for n in map(glimpses_per_graph, options) if n is not None]
        if "compile" in options or per_call:
            # draw/speed.py in the trees before issue 23
            name = "draw.fast_path" if importlib.util.find_spec("draw.fast_path") else "draw.speed"
            importlib.import_module(name).compile_glimpses(
                model, **{"per_call": per_call[0]} if per_call else {})
        precision = "bf16-mixed" if "bf16-mixed" in options else "32"
        # with the tree's own Adam (bench.run_adam)
        extra = {"dist": dist} if dist else {}
        if "matmul-medium" in options:
            extra["matmul_precision"] = "medium"
        step = bench.training_step(model, 100, precision, **extra)
    step()
    step()                                                 # warm-up
    # an editable install of another checkout supplies the draw modules a tree lacks: refuse to
    # time a step made of two trees
    tree = Path(os.environ["PYTHONPATH"]).resolve()
    foreign = sorted(name for name, module in sys.modules.items()
                     if name.partition(".")[0] == "draw" and getattr(module, "__file__", None)
                     and not Path(module.__file__).resolve().is_relative_to(tree))
    if foreign:
        sys.exit(f"error: {', '.join(foreign)} came from outside {tree}")
    print("ready", flush=True)
    tick = CLOCKS[clock]
    for _ in sys.stdin:
        start = tick()
        step()
        print(tick() - start, flush=True)


def narrow_windows(model, sigma: float) -> None:
    """Both attention heads' sigma at `sigma` pixels, as bench.py's `narrow_windows` (which
    needs a tree of today's layout) sets them: trained windows are narrow."""
    import torch
    with torch.no_grad():
        for head in (model.reader.readout, model.writer.z_trafo):
            head.bias[3] = 2 * torch.log(torch.tensor(sigma))          # log sigma^2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(tree: str, T: int, clock: str, threads: int) -> list[subprocess.Popen]:
    """The worker processes that time `tree`: one, or DDP_RANKS ranks of one DDP job sharing
    the `threads` with the ddp option."""
    folder, options = parse_tree(tree)
    ranks = DDP_RANKS if "ddp" in options else 1
    threads = max(1, threads // ranks)
    env = dict(os.environ, PYTHONPATH=str(Path(folder).resolve()), OMP_NUM_THREADS=str(threads))
    if ranks == 1:
        envs = [env]
    else:
        job = env | {"WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1",
                     "MASTER_PORT": str(free_port())}
        envs = [job | {"RANK": str(rank), "LOCAL_RANK": str(rank)} for rank in range(ranks)]
    return [subprocess.Popen(
        [sys.executable, __file__, "--worker", str(T), "--clock", clock, "--threads",
         str(threads)] + ["--options", ",".join(options)] * bool(options),
        cwd=folder, env=rank_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for rank_env in envs]


def compare(trees: list[str], T: int, steps: int, clock: str, threads: int) -> None:
    groups = [start_workers(tree, T, clock, threads) for tree in trees]
    for p in (p for group in groups for p in group):
        if p.stdout.readline().strip() != "ready":
            raise SystemExit(f"error: a worker did not start (T={T})")
    times = [[] for _ in groups]
    for i in range(steps):
        order = range(len(groups)) if i % 2 == 0 else reversed(range(len(groups)))
        for k in order:                           # alternate who goes first
            for p in groups[k]:                   # a DDP job's ranks all at once
                p.stdin.write("go\n")
                p.stdin.flush()
            times[k].append(max(float(p.stdout.readline()) for p in groups[k]))
    for p in (p for group in groups for p in group):
        p.stdin.close()
        p.wait()
    for tree, t in zip(trees, times):
        ratios = sorted(a / b for a, b in zip(times[0], t))
        print(f"T={T:<3} {tree:<28} {statistics.median(t) * 1e3:8.1f} ms/step  "
              f"first/this {statistics.median(ratios):.3f} "
              f"(quartiles {ratios[len(ratios) // 4]:.3f}-{ratios[3 * len(ratios) // 4]:.3f})")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trees", nargs="*", help="folders holding a draw/ package; the first is the "
                                            "reference of the ratios")
    p.add_argument("--niters", default="10,64", help="comma-separated T values")
    p.add_argument("--steps", type=int, default=30, help="timed steps per tree and T")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                   help="CPU time of the worker's thread (default) or wall time")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each worker")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--options", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker, a.clock, a.threads, [o for o in a.options.split(",") if o])
    elif len(a.trees) < 2 or not all((Path(parse_tree(t)[0]) / "draw").is_dir()
                                     for t in a.trees):
        sys.exit("error: give two or more folders that each hold a draw/ package")
    elif any("ddp" in parse_tree(t)[1] for t in a.trees) and (a.clock != "wall"
                                                              or a.threads < DDP_RANKS):
        # a thread's CPU time leaves out gloo's threads and the wait for the other rank, and
        # fewer threads than ranks would give the DDP job more cores than the others
        sys.exit(f"error: :ddp needs --clock wall and --threads {DDP_RANKS} or more")
    else:
        for T in (int(t) for t in a.niters.split(",")):
            compare(a.trees, T, a.steps, a.clock, a.threads)
