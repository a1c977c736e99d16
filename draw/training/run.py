"""Turn the settings of `train-draw.py` into a run: data, model, optimiser, extensions, files.

`main(**flags)` first builds and checks the settings (draw/settings.py: defaults, a config file,
the flags, or a resumed run's own settings), the model files (`--oldmodel`, `--resume`), the
device, the data and the run directory's name; only then does anything touch the disk, so a bad
command line leaves no trace. A run then lives in `<name>-YYYYmmdd-HHMMSS/`:

    config.json              the resolved model config and run settings
    args.txt                 the command line (one more line per resume)
    <longname>_model.pkl     config, parameters, optimiser, RNG and loop state (checkpoint.py)
    <longname>_log.pkl       one row of numbers per epoch
    sample.png, epoch-NNN.png, training.gif, sequence.gif   samples (extensions.py)

with the classic self-describing long name, e.g. `bmnist-r2-w5-t64-enc256-dec256-z100-lr34`.

Training goes through the model's own forward pass (draw/training/task.py). Denormal floats
are flushed to zero on the CPU unless `--no-flush-denormal`: a process-wide setting, applied
here explicitly and shown in the header. Under `torchrun --nproc_per_node=K` the same run is
data-parallel (draw/training/distributed.py): `--bs` is the global batch, every process trains
on its slice of it, and the run takes the steps of a single process up to float rounding; only
the main process (rank 0) prints and writes files, and a run may be resumed with another number
of processes.
"""
import json
import math
import os
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from draw.atomic import atomic_write_bytes
from draw.datasets import batches, get_data
from draw.datasets.store import dataset_spec
from draw.errors import DrawError
from draw.model import DrawConfig, DrawModel
from draw.settings import DrawSettings
from draw.training.checkpoint import (CheckpointError, load_checkpoint, load_model,
                                      resolve_device, set_rng_state)
from draw.training.distributed import (Distributed, close_distributed, first_on_each_machine,
                                       init_distributed, process_place, reported_once)
from draw.training.extensions import (Checkpoint, DataStreamMonitoring, FinishAfter, Plot,
                                      Printing, ProgressBar, SampleCheckpoint, Timing,
                                      TrainingDataMonitoring)
from draw.training.main_loop import MainLoop
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


@dataclass(frozen=True)
class _Plan:
    """A complete run, before anything is written: the checked settings, this process's place
    and device, the data, and the run directory (to create, or to continue)."""
    checked: _Checked
    dist: Distributed
    device: torch.device
    splits: dict[str, torch.Tensor]    # train (or its --subset), valid, test, on the device
    run_path: Path


def _find_checkpoint(resume: str) -> tuple[Path, Path]:
    path = Path(resume)
    if path.is_file():
        return path.parent, path
    if path.is_dir():
        found = sorted(path.glob("*_model.pkl"))
        if len(found) != 1:
            raise DrawError(f"--resume {resume}: expected one *_model.pkl file there, "
                            f"found {len(found)}")
        return path, found[0]
    raise DrawError(f"--resume {resume}: no such run directory")


def _check(flags: dict) -> _Checked:
    """Build and check the settings and read the model files; raise DrawError, write nothing."""
    given = DrawSettings.given(flags)
    run_path = ckpt = old = None
    if given.get("resume") is not None:
        run_path, model_file = _find_checkpoint(given["resume"])
        try:
            ckpt = load_checkpoint(model_file)
        except CheckpointError as e:
            raise DrawError(f"--resume: {e}") from e
        if not isinstance(ckpt.get("run"), dict) or TRAINING_STATE - set(ckpt):
            raise DrawError(f"--resume: {model_file} was not saved by train-draw.py (it lacks "
                            f"the run settings or the training state)")
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
    return _Checked(settings, cfg, device, run_path, ckpt, old)


def _subset(images: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    if n is None or n >= images.shape[0]:
        return images
    # random, not the first n: binarized MNIST's test set is sorted by digit
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    return images[pick[:n]]


def _load_splits(s: DrawSettings, d: Distributed,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """The run's train (or its --subset), valid and test images, on `device`.

    Under torchrun the first process of each machine loads first, since it may download and
    convert; the others then read its files.
    """
    data = first_on_each_machine(d, lambda: get_data(s.dataset, root=s.data_dir), device,
                                 what=f"loading {s.dataset}")
    # on the device once, rather than copied there at every pass; valid and test stay whole
    return {"train": _subset(data.train, s.subset, s.seed).to(device),
            "valid": data.valid.to(device), "test": data.test.to(device)}


def _new_run_path(parent: Path, name: str) -> Path:
    """`<name>-YYYYmmdd-HHMMSS` in `parent`, checked to be creatable; made by `_make_run_dir`."""
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise DrawError(f"--run-dir {parent}: {existing} is not a writable directory")
    return parent / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _make_run_dir(planned: Path) -> Path:
    try:
        planned.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(100):
            # two runs started in the same second get -2, -3, ... rather than one directory
            run_dir = planned.with_name(planned.name + (f"-{attempt + 1}" if attempt else ""))
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:
                continue
    except OSError as e:
        raise DrawError(f"cannot create a run directory in {planned.parent}: "
                        f"{e.strerror or e}") from e
    raise DrawError(f"cannot create a run directory in {planned.parent}: too many runs named "
                    f"{planned.name}")


def _write_text(path: Path, text: str) -> None:
    try:
        atomic_write_bytes(path, text.encode())
    except OSError as e:
        raise DrawError(f"cannot write {path}: {e.strerror or e}") from e


def _header(longname: str, plan: _Plan, n_params: int, resumed_at: str | None) -> str:
    s, cfg, splits, d = plan.checked.settings, plan.checked.cfg, plan.splits, plan.dist
    bs = s.batch_size
    lines = [f"\n{'Resuming' if resumed_at else 'Running'} experiment {longname}"]
    for label, value in (
            ("dataset", f"{s.dataset} ({splits['train'].shape[0]} train, "
                        f"{splits['valid'].shape[0]} valid, {splits['test'].shape[0]} test "
                        f"images of {cfg.channels}x{cfg.height}x{cfg.width})"),
            ("subdirectory", plan.run_path), ("learning rate", f"{s.learning_rate:g}"),
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
            ("flush denormals", "on" if s.flush_denormal else "off"),
            ("parameters", f"{n_params:,}"), ("resumed at", resumed_at)):
        if value is not None:
            lines.append(f"{label:>22}: {value}")
    return "\n".join(lines) + "\n"


def _build_loop(plan: _Plan, longname: str) -> MainLoop:
    """Model, Adam, data order and the classic extensions, in the order they must run."""
    s, cfg, run_path = plan.checked.settings, plan.checked.cfg, plan.run_path
    bs = s.batch_size
    writer = plan.dist.is_main        # only the main rank prints, shows progress, writes files
    model = DrawModel.from_config(cfg).to(plan.device)
    if plan.checked.old is not None:
        model.load_state_dict(plan.checked.old.state_dict())
    task = DrawTask(model, plan.dist)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.learning_rate)
    generator = torch.Generator().manual_seed(s.seed)
    extensions = [ProgressBar(math.ceil(plan.splits["train"].shape[0] / bs))] if writer else []
    extensions += [
        Timing(),
        FinishAfter(after_n_epochs=s.epochs),
        TrainingDataMonitoring(),
        *[DataStreamMonitoring(lambda split=plan.splits[key]: batches(split, bs,
                                                                      device=plan.device),
                               key, plan.device, seed=s.seed)
          for key in ("valid", "test") if plan.splits[key].shape[0] > 0],
    ]
    if writer:
        extensions += [
            Printing(),
            SampleCheckpoint(run_path, (cfg.channels, cfg.height, cfg.width), n=N_SAMPLES,
                             seed=s.seed),
            Checkpoint(run_path, longname, s.stored()),  # last: it saves what the others logged
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
        if ckpt is not None and ckpt["epoch"] >= s.epochs and ckpt["batch"] == 0:
            if place.is_main:
                print(f"{checked.run_path} already has {ckpt['epoch']} epochs; nothing to do "
                      f"(pass --epochs N to train longer)")
            return
        dist, device = init_distributed(checked.device)
        finished = False
        try:
            splits = _load_splits(s, dist, device)
            run_path = checked.run_path or _new_run_path(Path(s.run_dir), s.name or s.dataset)
            _run(_Plan(checked, dist, device, splits, run_path))
            finished = True
        finally:
            close_distributed(dist, finished)


def _run(plan: _Plan) -> None:
    """Everything is valid: from here on the run exists."""
    s, ckpt, writer = plan.checked.settings, plan.checked.ckpt, plan.dist.is_main
    longname = long_name(s)
    # process-wide: subnormal floats become 0 in CPU arithmetic (no effect on GPUs)
    torch.set_flush_denormal(s.flush_denormal)
    if ckpt is None:
        # every rank alike: the same initial parameters, and the same training noise
        torch.manual_seed(s.seed)
        np.random.seed(s.seed)
        random.seed(s.seed)
        if writer:
            plan = _Plan(plan.checked, plan.dist, plan.device, plan.splits,
                         _make_run_dir(plan.run_path))
    loop = _build_loop(plan, longname)
    if writer:
        command = shlex.join([Path(sys.executable).name, *sys.argv])
        args_txt = plan.run_path / "args.txt"
        previous = args_txt.read_text() + "# resumed\n" if ckpt is not None else ""
        _write_text(args_txt, previous + command + "\n")
        _write_text(plan.run_path / "config.json", json.dumps(
            {"name": longname, "config": plan.checked.cfg.to_dict(), "run": s.stored(),
             "device": str(plan.device), "processes": plan.dist.world_size,
             "torch": torch.__version__}, indent=2) + "\n")
    resumed_at = None
    if ckpt is not None:
        loop.model.load_state_dict(ckpt["model"])
        loop.optimizer.load_state_dict(ckpt["optimizer"])
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
        if writer:
            launcher = "torchrun --nproc_per_node=K" if plan.dist.enabled else "python"
            print(f"stopped by Ctrl-C at epoch {loop.status['epoch']}, batch "
                  f"{loop.status['batch']}; saved. Continue with: {launcher} train-draw.py "
                  f"--resume {plan.run_path}", file=sys.stderr)
        # the caller (a script, a notebook) stops as for any Ctrl-C, but nothing is lost
        raise KeyboardInterrupt
