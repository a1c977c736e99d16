"""Turn the settings of `train-draw.py` into a run: data, model, optimiser, extensions, files.

`main(**flags)` first builds and checks the settings (draw/settings.py: defaults, a config file,
the flags, or a resumed run's own settings), the model files (`--oldmodel`, `--resume`), the
device, the data, the memory the model needs and the run directory's name; only then does
anything touch the disk, so a bad command line leaves no trace. A run then lives in
`<name>-YYYYmmdd-HHMMSS/`, with `name` = --name or the dataset, as in the classic repository:

    .lock                    held while a process trains here (draw/training/lock.py)
    config.json              the long name, the resolved model config and run settings
    args.txt                 the command line (one more line per resume)
    <name>_model.pkl         config, parameters, optimiser, RNG and loop state (checkpoint.py)
    <name>_log.pkl           one row of numbers per epoch
    sample.png, epoch-NNN.png, training.gif, sequence.gif   samples (extensions.py)

The classic self-describing long name, e.g. `bmnist-r2-w5-t64-enc256-dec256-z100-lr34`, is in
the header and config.json. Runs made before kept their files under the long name; a resumed
run goes on writing the files it found. A run killed before its first model file is restarted
by `--resume` from the settings in its config.json.

Training goes through the model's own forward pass (draw/training/task.py), its glimpses
compiled by `torch.compile` when the run is long enough to repay it (`draw.speed.compile_choice`;
`--compile`, `--no-compile` decide instead), as the header says. Denormal floats are flushed to zero on the CPU unless `--no-flush-denormal`: a process-wide setting, applied
here explicitly and shown in the header. Under `torchrun --nproc_per_node=K` the same run is
data-parallel (draw/training/distributed.py): `--bs` is the global batch, every process trains
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from draw.datasets import batches, get_data
from draw.datasets.store import dataset_spec
from draw.errors import DrawError, Interrupted
from draw.model import DrawConfig, DrawModel
from draw.resources import check_memory, training_bytes
from draw.settings import DrawSettings
from draw.speed import compile_choice, compile_glimpses
from draw.training.checkpoint import (CheckpointError, draw_config, load_checkpoint, load_model,
                                      resolve_device, set_rng_state)
from draw.training.distributed import (Distributed, close_distributed, first_on_each_machine,
                                       init_distributed, process_place, reported_once)
from draw.training.extensions import (Checkpoint, DataStreamMonitoring, FinishAfter,
                                      LearningRateSchedule, Plot, Printing, ProgressBar,
                                      SampleCheckpoint, Timing, TrainingDataMonitoring)
from draw.training.lock import RunLock, check_unlocked
from draw.training.rundir import (experiment_name, find_checkpoint, make_run_dir, new_run_path,
                                  nothing_to_do, read_text, stored_in_config, write_text)
from draw.training.main_loop import MainLoop, adam, load_adam_state
from draw.training.task import DrawTask

N_SAMPLES = 100     # samples in sample.png and the GIFs, a 10 x 10 grid
# what a checkpoint needs besides its settings to be resumed
TRAINING_STATE = {"optimizer", "rng", "batch", "epoch_rng", "log", "extensions"}


def lr_tag(value: float) -> str:
    """The classic short learning-rate tag: leading digit, then minus the exponent.

    >>> lr_tag(1e-3), lr_tag(3e-4), lr_tag(0.005)
    ('13', '34', '53')
    """
    exponent = math.floor(math.log10(value))
    return f"{f'{value:e}'[0]}{-exponent}"


def long_name(s: DrawSettings) -> str:
    """The classic run name, e.g. `bmnist-r2-w5-t64-enc256-dec256-z100-lr34`."""
    tag = "full" if s.read_N is None else f"r{s.read_N}-w{s.write_N}"
    return (f"{s.dataset}-{tag}-t{s.n_iter}-enc{s.enc_dim}-dec{s.dec_dim}-z{s.z_dim}-"
            f"lr{lr_tag(s.learning_rate)}")


@dataclass(frozen=True)
class _Checked:
    """What the command line and the files it names say, all checked; nothing read or written
    beyond the model files. Under torchrun every process checks its flags alone, before they
    join the process group."""
    settings: DrawSettings
    cfg: DrawConfig
    device: torch.device
    run_path: Path | None         # the run directory when resuming
    ckpt: dict | None             # the checkpoint to resume from
    old: DrawModel | None         # the --oldmodel to start from
    files: str                    # <files>_model.pkl, <files>_log.pkl


@dataclass(frozen=True)
class _Plan:
    """A complete run, before anything is written: the checked settings, this process's place
    and device, the data, and the run directory (to create, or to continue)."""
    checked: _Checked
    dist: Distributed
    device: torch.device
    splits: dict[str, torch.Tensor]    # train (or its --subset), valid, test, on the device
    binary: bool                       # every pixel 0 or 1: the bound is one on -log p(x)
    run_path: Path
    compiled: tuple[bool, str]         # whether the glimpses are compiled, and why (speed.py)


def _check(flags: dict) -> _Checked:
    """Build and check the settings and read the model files; raise DrawError, write nothing."""
    given = DrawSettings.given(flags)
    run_path = ckpt = old = model_file = None
    if given.get("resume") is not None:
        run_path, model_file = find_checkpoint(given["resume"])
        check_unlocked(run_path)
        if model_file is None:
            stored = stored_in_config(run_path)
            settings = DrawSettings.resumed(stored, given, str(run_path / "config.json"))
        else:
            try:
                ckpt = load_checkpoint(model_file)
                draw_config(ckpt, model_file)     # a DRAW model's file (not a classifier's)
            except CheckpointError as e:
                raise DrawError(f"--resume: {e}") from e
            if not isinstance(ckpt.get("run"), dict) or TRAINING_STATE - set(ckpt):
                raise DrawError(f"--resume: {model_file} lacks the run settings or the "
                                f"training state (an exported or foreign model file: "
                                f"start a new run from it with --oldmodel)")
            settings = DrawSettings.resumed(ckpt["run"], given, str(model_file))
    else:
        settings = DrawSettings(**given)
    device = resolve_device(settings.device)
    C, H, W = dataset_spec(settings.dataset).shape
    try:
        cfg = DrawConfig(channels=C, height=H, width=W, n_iter=settings.n_iter,
                         enc_dim=settings.enc_dim, dec_dim=settings.dec_dim,
                         z_dim=settings.z_dim, read_N=settings.read_N, write_N=settings.write_N)
    except ValueError as e:
        raise DrawError(f"--attention={settings.attention}: {e}") from e
    if ckpt is not None and DrawConfig.from_dict(ckpt["config"]) != cfg:
        raise DrawError(f"--resume {settings.resume}: the model file's config does not match "
                        f"{settings.dataset}'s {C}x{H}x{W} images")
    if settings.oldmodel is not None and ckpt is None:
        try:
            old, _ = load_model(settings.oldmodel)
        except CheckpointError as e:
            raise DrawError(f"--oldmodel: {e}") from e
        if old.config != cfg:
            diffs = ", ".join(f"{k} {v} there, {cfg.to_dict()[k]} here"
                              for k, v in old.config.to_dict().items() if cfg.to_dict()[k] != v)
            raise DrawError(f"--oldmodel {settings.oldmodel} has another configuration: {diffs}")
    files = (model_file.name[:-len("_model.pkl")] if model_file is not None
             else settings.name or settings.dataset)
    return _Checked(settings, cfg, device, run_path, ckpt, old, files)


def _subset(images: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    if n is None or n >= images.shape[0]:
        return images
    # random, not the first n: binarized MNIST's test set is sorted by digit
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    return images[pick[:n]]


def _load_splits(s: DrawSettings, d: Distributed,
                 device: torch.device) -> tuple[dict[str, torch.Tensor], bool]:
    """The run's train (or its --subset), valid and test images (and their --eval-subset), on
    `device`, and whether the data are binary.

    Under torchrun the first process of each machine loads first, since it may download and
    convert; the others then read its files.
    """
    data = first_on_each_machine(d, lambda: get_data(s.dataset, root=s.data_dir), device,
                                 what=f"loading {s.dataset}")
    # on the device once, rather than copied there at every pass; valid and test stay whole,
    # and their --eval-subset is a view into them
    splits = {"train": _subset(data.train, s.subset, s.seed).to(device),
              "valid": data.valid.to(device), "test": data.test.to(device)}
    for key in ("valid", "test"):
        splits[f"{key}_subset"] = _subset(splits[key], s.eval_subset or None, s.seed)
    n_train = splits["train"].shape[0]
    if s.batch_size > n_train:
        raise DrawError(f"--bs {s.batch_size} is larger than the training set ({n_train} "
                        f"images{' with --subset' if s.subset else ''})")
    return splits, data.binary


def _check_memory(cfg: DrawConfig, s: DrawSettings, d: Distributed,
                  device: torch.device) -> None:
    """One line, before the model is built, if training cannot fit in memory."""
    per_process = -(-s.batch_size // d.world_size)
    check_memory(training_bytes(cfg, per_process),
                 f"training this model (T={cfg.n_iter}, enc {cfg.enc_dim}, dec {cfg.dec_dim}, "
                 f"z {cfg.z_dim}) on batches of {per_process}", device)


def _header(longname: str, plan: _Plan, n_params: int, resumed_at: str | None) -> str:
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


def _monitors(plan: _Plan) -> list[DataStreamMonitoring]:
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


def _build_loop(plan: _Plan) -> MainLoop:
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
    n_batches = math.ceil(plan.splits["train"].shape[0] / bs)
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
        if s.live_plotting:
            extensions.append(Plot(run_path, port=s.plot_port))
    train = plan.splits["train"]
    # every rank draws the same global batches from the same generator (main_loop.py)
    return MainLoop(task, optimizer,
                    lambda: batches(train, bs, generator=generator, device=plan.device),
                    generator, extensions, grad_clip=s.grad_clip)


def main(**flags) -> None:
    """Train DRAW; `flags` are train-draw.py's, by DrawSettings field name, plus `config`.

    A setting not given takes its value from the config file, else its default, or on
    `resume` the run's own (draw/settings.py says which a resumed run may change).

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
        checked = _check(flags)
        ckpt, s = checked.ckpt, checked.settings
        if nothing_to_do(checked.run_path, ckpt, s.epochs, place.is_main):
            return
        dist, device = init_distributed(checked.device)
        finished = False
        try:
            splits, binary = _load_splits(s, dist, device)
            _check_memory(checked.cfg, s, dist, device)
            run_path = checked.run_path or new_run_path(Path(s.run_dir), s.name or s.dataset)
            n_batches = math.ceil(splits["train"].shape[0] / s.batch_size)
            done = 0 if ckpt is None else ckpt["epoch"] * n_batches + ckpt["batch"]
            compiled = compile_choice(s.compile, (s.epochs * n_batches - done) * s.n_iter, device)
            _run(_Plan(checked, dist, device, splits, binary, run_path, compiled))
            finished = True
        finally:
            close_distributed(dist, finished)


def _run(plan: _Plan) -> None:
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


def _train(plan: _Plan) -> None:
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
        status, batches_per_epoch = loop.status, math.ceil(plan.splits["train"].shape[0] /
                                                           s.batch_size)
        # the progress bar's numbers: epoch E is the one in progress, batch B of its total
        where = (f"in epoch {status['epoch'] + 1} after batch {status['batch']} of "
                 f"{batches_per_epoch}" if status["batch"] else
                 f"after epoch {status['epoch']}")
        # the caller (a script, a notebook) stops as for any Ctrl-C, but nothing is lost
        raise Interrupted(f"stopped by Ctrl-C {where}; saved. Continue with: {launcher} "
                          f"train-draw.py --resume {plan.run_path}")
