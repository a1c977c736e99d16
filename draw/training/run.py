"""Turn the settings of `train-draw.py` into a run: data, model, optimiser, extensions, files.

`main(**flags)` first checks everything (draw/training/plan.py: the settings, the model files,
the device, the data, the memory the model needs, the run directory's name); only then does
anything touch the disk, so a bad command line leaves no trace. A run then lives in
`<name>-YYYYmmdd-HHMMSS/`, with `name` = --name or the dataset, as in the classic repository:

    .lock                    held while a process trains here (draw/training/lock.py)
    config.json              the long name, the resolved model config and run settings
    args.txt                 the command line (one more line per resume)
    <name>_model.pkl         config, parameters, optimiser, RNG and loop state (draw/checkpoint.py)
    <name>_log.pkl           one row of numbers per epoch
    <name>_log.csv           the same rows as CSV, one column per key
    sample.png, epoch-NNN.png, training.gif, sequence.gif   samples (extensions.py)
    events.out.tfevents.*    with --tensorboard: the log and the samples (tensorboard.py)

The classic self-describing long name, e.g. `bmnist-r2-w5-t64-enc256-dec256-z100-lr34`, is in
the header and config.json. Runs made before kept their files under the long name; a resumed
run goes on writing the files it found. A run killed before its first model file is restarted
by `--resume` from the settings in its config.json.

Training goes through the model's own forward pass (draw/training/task.py), its glimpses
compiled by `torch.compile` when the run is long enough to repay it (`draw.speed.compile_choice`;
`--compile`, `--no-compile` decide instead). Denormal floats are flushed to zero on the CPU
unless `--no-flush-denormal`: a process-wide setting, applied here explicitly. The header says
both. Under `torchrun --nproc_per_node=K` the same run is data-parallel
(draw/training/distributed.py): `--bs` is the global batch, every process trains
on its slice of it, and the run takes the steps of a single process up to float rounding; only
the main process (rank 0) prints and writes files, and a run may be resumed with another number
of processes.
"""
import dataclasses
import json
import math
import random
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from draw.checkpoint import set_rng_state
from draw.datasets import batches
from draw.errors import Interrupted
from draw.model import DrawModel
from draw.speed import compile_glimpses
from draw.training.distributed import (close_distributed, init_distributed, process_place,
                                       reported_once)
from draw.training.extensions import (Checkpoint, DataStreamMonitoring, FinishAfter,
                                      LearningRateSchedule, Plot, Printing, ProgressBar,
                                      SampleCheckpoint, Timing, TrainingDataMonitoring)
from draw.training.lock import RunLock
from draw.training.main_loop import MainLoop, adam, load_adam_state
from draw.training.plan import N_SAMPLES, Plan, check, long_name, make_plan
from draw.training.rundir import experiment_name, make_run_dir, nothing_to_do, read_text, write_text
from draw.training.task import DrawTask
from draw.training.tensorboard import TensorBoard


def _header(longname: str, plan: Plan, n_params: int, resumed_at: str | None) -> str:
    s, cfg, splits, d = plan.checked.settings, plan.checked.cfg, plan.splits, plan.dist
    bs = s.batch_size
    lines = [f"\n{'Resuming' if resumed_at else 'Running'} experiment {longname}"]
    for label, value in (
            ("dataset", f"{s.dataset} ({splits['train'].shape[0]} train, "
                        f"{splits['valid'].shape[0]} valid, {splits['test'].shape[0]} test "
                        f"images of {cfg.channels}x{cfg.height}x{cfg.width})"),
            ("subdirectory", plan.run_path), ("learning rate", s.describe_lr()),
            ("attention", s.attention or "none"), ("n_iterations", cfg.n_iter),
            ("encoder dimension", cfg.enc_dim), ("z dimension", cfg.z_dim),
            ("decoder dimension", cfg.dec_dim),
            ("batch size", f"{bs} in all, {bs // d.world_size}-{-(-bs // d.world_size)} per "
                           f"process" if d.enabled else bs),
            ("epochs", s.epochs), ("seed", s.seed),
            ("processes", f"{d.world_size} (torchrun, DistributedDataParallel over "
                          f"{'NCCL' if plan.device.type == 'cuda' else 'gloo'})"
             if d.enabled else None),
            ("device", f"{plan.device.type}, one per process" if d.enabled else plan.device),
            ("CPU threads", torch.get_num_threads()),
            ("flush denormals", "on" if s.flush_denormal else "off"),
            ("compiled glimpses", plan.compiled[1]),
            ("evaluation", f"every {s.eval_every} epoch(s) on "
                           f"{splits['valid_subset'].shape[0]} valid and "
                           f"{splits['test_subset'].shape[0]} test images; the whole splits "
                           f"after the last"),
            ("objective", "the bound on -log p(x) (eq. 12), nats" if plan.binary else
             "Bernoulli cross-entropy of the grey levels + KL (eq. 12), nats: not a bound "
             "on -log p(x) for non-binary data"),
            ("parameters", f"{n_params:,}"), ("resumed at", resumed_at)):
        if value is not None:
            lines.append(f"{label:>22}: {value}")
    return "\n".join(lines) + "\n"


def _monitors(plan: Plan) -> list[DataStreamMonitoring]:
    """Evaluation of valid and test: on their --eval-subset every --eval-every epochs, on the
    whole splits after the last epoch, with a progress bar on the main process."""
    s = plan.checked.settings
    bs, monitors = s.batch_size, []
    for key in ("valid", "test"):
        whole, part = plan.splits[key], plan.splits[f"{key}_subset"]
        if whole.shape[0] == 0:
            continue
        monitors.append(DataStreamMonitoring(
            lambda images=part: batches(images, bs, device=plan.device), key, plan.device,
            seed=s.seed, every=s.eval_every,
            final=lambda images=whole: batches(images, bs, device=plan.device),
            sizes=(math.ceil(part.shape[0] / bs), math.ceil(whole.shape[0] / bs)),
            progress=plan.dist.is_main))
    return monitors


def _build_loop(plan: Plan) -> MainLoop:
    """Model, Adam, data order and the classic extensions, in the order they must run."""
    s, cfg, run_path = plan.checked.settings, plan.checked.cfg, plan.run_path
    bs = s.batch_size
    writer = plan.dist.is_main        # only the main rank prints, shows progress, writes files
    model = DrawModel.from_config(cfg).to(plan.device)
    if plan.checked.old is not None:
        model.load_state_dict(plan.checked.old.state_dict())
    if plan.compiled[0]:
        compile_glimpses(model)
    task = DrawTask(model, plan.dist)
    optimizer = adam(model.parameters(), lr=s.learning_rate)
    generator = torch.Generator().manual_seed(s.seed)
    n_batches = plan.batches_per_epoch
    extensions = [ProgressBar(n_batches)] if writer else []
    extensions += [Timing(), FinishAfter(after_n_epochs=s.epochs),
                   LearningRateSchedule(optimizer, s.learning_rate, s.lr_warmup, s.lr_decay,
                                        n_batches),
                   TrainingDataMonitoring(), *_monitors(plan)]
    if writer:
        extensions += [
            Printing(),
            # the model file commits an epoch; the log and the pictures follow it
            Checkpoint(run_path, plan.checked.files, s.stored()),
            SampleCheckpoint(run_path, (cfg.channels, cfg.height, cfg.width), n=N_SAMPLES,
                             seed=s.seed),
        ]
        if s.tensorboard:
            extensions.append(TensorBoard(run_path, "epoch-{epoch:03d}.png", "samples"))
        if s.live_plotting:
            extensions.append(Plot(run_path, port=s.plot_port))
    train = plan.splits["train"]
    loop = MainLoop(task, optimizer, None, generator, extensions, grad_clip=s.grad_clip)
    # every rank draws the same global batches from the same generator (main_loop.py); the
    # images of epoch e are epoch e's (svhn-multi's random patches, draw/datasets/crops.py)
    loop.epoch_batches = lambda: batches(train, bs, generator=generator,
                                         epoch=loop.status["epoch"], device=plan.device)
    return loop


def main(**flags) -> None:
    """Train DRAW; `flags` are train-draw.py's, by DrawSettings field name, plus `config`.

    A setting not given takes its value from the config file, else its default, or on
    `resume` the run's own (draw/training/settings.py says which a resumed run may change).

    Under torchrun every process calls `main` with the same flags; `batch_size` is the global
    batch, split between the processes (draw/training/distributed.py). Only the main process
    prints and writes files.

    Raises
    ------
    DrawError
        For anything the user can fix, before any file is written.
    KeyboardInterrupt
        After a first Ctrl-C has stopped training and the state has been saved.
    """
    place = process_place()
    with reported_once(place):
        checked = check(flags)
        ckpt, s = checked.ckpt, checked.settings
        if nothing_to_do(checked.run_path, ckpt, s.epochs, place.is_main):
            return
        dist, device = init_distributed(checked.device)
        finished = False
        try:
            _run(make_plan(checked, dist, device))
            finished = True
        finally:
            close_distributed(dist, finished)


def _run(plan: Plan) -> None:
    """Everything is valid: from here on the run exists. The main process holds the run
    directory's lock while it trains (which also clears what a killed save left)."""
    lock = None
    try:
        if plan.dist.is_main:
            if plan.checked.run_path is None:
                plan = dataclasses.replace(plan, run_path=make_run_dir(plan.run_path))
            lock = RunLock(plan.run_path).acquire()
        _train(plan)
    finally:
        if lock is not None:
            lock.release()


def _train(plan: Plan) -> None:
    s, ckpt, writer = plan.checked.settings, plan.checked.ckpt, plan.dist.is_main
    longname = experiment_name(plan.checked.run_path, long_name(s))
    s.apply_to_process()          # threads and denormal flushing, process-wide
    if ckpt is None:
        # every rank alike: the same initial parameters, and the same training noise
        torch.manual_seed(s.seed)
        np.random.seed(s.seed)
        random.seed(s.seed)
    loop = _build_loop(plan)
    if writer:
        command = shlex.join([Path(sys.executable).name, *sys.argv])
        args_txt = plan.run_path / "args.txt"
        previous = ""
        if plan.checked.run_path is not None:
            previous = read_text(args_txt) + ("# resumed\n" if ckpt is not None else
                                               "# restarted: killed before its first save\n")
        write_text(args_txt, previous + command + "\n")
        write_text(plan.run_path / "config.json", json.dumps(
            {"name": longname, "config": plan.checked.cfg.to_dict(), "run": s.stored(),
             "device": str(plan.device), "processes": plan.dist.world_size,
             "torch": torch.__version__}, indent=2) + "\n")
    resumed_at = None
    if ckpt is not None:
        loop.model.load_state_dict(ckpt["model"])
        load_adam_state(loop.optimizer, ckpt["optimizer"])
        loop.load_state_dict(ckpt)
        # last: building the model drew from the global generator
        set_rng_state(ckpt["rng"], loop.generator)
        if plan.dist.enabled and plan.device.type == "cuda" and ckpt["rng"]["cuda"]:
            # the training noise comes from each rank's own GPU generator, all of which drew
            # alike; the main rank saved its GPU's state first (cuda:0, as LOCAL_RANK 0)
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"][0], plan.device)
        resumed_at = f"epoch {ckpt['epoch']}"
        if ckpt["batch"]:
            resumed_at += f", batch {ckpt['batch']}"
    if writer:
        n_params = sum(p.numel() for p in loop.model.parameters())
        print(_header(longname, plan, n_params, resumed_at), flush=True)
    loop.run()
    if loop.status["interrupted"]:
        launcher = "torchrun --nproc_per_node=K" if plan.dist.enabled else "python"
        status = loop.status
        # the progress bar's numbers: epoch E is the one in progress, batch B of its total
        where = (f"in epoch {status['epoch'] + 1} after batch {status['batch']} of "
                 f"{plan.batches_per_epoch}" if status["batch"] else
                 f"after epoch {status['epoch']}")
        # the caller (a script, a notebook) stops as for any Ctrl-C, but nothing is lost
        raise Interrupted(f"stopped by Ctrl-C {where}; saved. Continue with: {launcher} "
                          f"train-draw.py --resume {plan.run_path}")
