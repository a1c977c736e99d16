"""Turn the settings of `train-draw.py` into a run: data, model, optimiser, extensions, files.

Everything the user can get wrong (flags, dataset files, `--oldmodel`, `--resume`) is checked
before the run directory is made, so a bad command line leaves no trace on disk. A run then lives
in `<name>-YYYYmmdd-HHMMSS/`:

    config.json              the resolved model config and run settings
    args.txt                 the command line (one more line per resume)
    <longname>_model.pkl     config, parameters, optimiser, RNG and loop state (draw/training/checkpoint.py)
    <longname>_log.pkl       one row of numbers per epoch
    sample.png, epoch-NNN.png, training.gif, sequence.gif   samples (draw/training/extensions.py)

with the classic self-describing long name, e.g. `bmnist-r2-w5-t64-enc256-dec256-z100-lr34`.

Training runs through the fast path (draw/fast.py) unless `fast=False` (`--no-fast`). Under
`torchrun --nproc_per_node=K` the same run is data-parallel (draw/training/distributed.py): `--bs` is
the global batch, every process trains on its slice of it, and the run takes the steps of a
single process up to float rounding; only the main process (rank 0) prints and writes files,
and a run may be resumed with another number of processes.
"""
import json
import math
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from draw.atomic import atomic_write_bytes
from draw.training.checkpoint import (CheckpointError, load_checkpoint, load_model, resolve_device,
                             set_rng_state)
from draw.datasets import batches, get_data, supported_datasets
from draw.datasets.store import dataset_spec
from draw.training.distributed import (Distributed, close_distributed, first_on_each_machine,
                              init_distributed, process_place, reported_once)
from draw.errors import DrawError
from draw.training.extensions import (Checkpoint, DataStreamMonitoring, FinishAfter, Plot, Printing,
                             ProgressBar, SampleCheckpoint, Timing, TrainingDataMonitoring)
from draw.fast import accelerate
from draw.training.main_loop import MainLoop
from draw.model import DrawConfig, DrawModel

# the classic train-draw.py defaults, plus the new --seed and --grad-clip
DEFAULTS = {"name": None, "dataset": "bmnist", "epochs": 100, "batch_size": 100,
            "learning_rate": 1e-3, "attention": "", "n_iter": 10, "enc_dim": 256, "dec_dim": 256,
            "z_dim": 100, "oldmodel": None, "seed": 1, "grad_clip": 10.0, "subset": None}
# how each setting is spelled on the command line, for messages
FLAGS = {"name": "--name", "dataset": "--dataset", "epochs": "--epochs", "batch_size": "--bs",
         "learning_rate": "--lr", "attention": "--attention", "n_iter": "--niter",
         "enc_dim": "--enc-dim", "dec_dim": "--dec-dim", "z_dim": "--z-dim",
         "oldmodel": "--oldmodel", "seed": "--seed", "grad_clip": "--grad-clip",
         "subset": "--subset"}
N_SAMPLES = 100     # samples in sample.png and the GIFs, a 10 x 10 grid


def lr_tag(value: float) -> str:
    """The classic short learning-rate tag: leading digit, then minus the exponent.

    >>> lr_tag(1e-3), lr_tag(3e-4), lr_tag(0.005)
    ('13', '34', '53')
    """
    exponent = math.floor(math.log10(value))
    return f"{f'{value:e}'[0]}{-exponent}"


def long_name(settings: dict) -> str:
    """The classic run name, e.g. `bmnist-r2-w5-t64-enc256-dec256-z100-lr34`."""
    read_N, write_N = parse_attention(settings["attention"])
    tag = "full" if read_N is None else f"r{read_N}-w{write_N}"
    return (f"{settings['dataset']}-{tag}-t{settings['n_iter']}-enc{settings['enc_dim']}-"
            f"dec{settings['dec_dim']}-z{settings['z_dim']}-lr{lr_tag(settings['learning_rate'])}")


def parse_attention(attention: str) -> tuple[int | None, int | None]:
    """`--attention`: "" is no attention, "R,W" an R x R read and a W x W write window."""
    if not attention.strip():
        return None, None
    parts = attention.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise DrawError(f"--attention must be two positive window sizes READ,WRITE such as 2,5 "
                        f"(or empty for none), got {attention!r}")
    return int(parts[0]), int(parts[1])


def _check(settings: dict) -> None:
    for key in ("epochs", "batch_size", "n_iter", "enc_dim", "dec_dim", "z_dim", "subset"):
        value = settings[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise DrawError(f"{FLAGS[key]} must be a positive integer, got {value!r}")
    for key in ("learning_rate", "grad_clip"):
        if not (math.isfinite(settings[key]) and settings[key] > 0):
            raise DrawError(f"{FLAGS[key]} must be a positive number, got {settings[key]!r}")
    if settings["dataset"] not in supported_datasets:
        raise DrawError(f"unknown --dataset {settings['dataset']!r}; choose from "
                        f"{', '.join(supported_datasets)}")
    parse_attention(settings["attention"])


def _resume_settings(resume: str, given: dict) -> tuple[Path, dict, dict]:
    """The run directory, its checkpoint and its settings; given flags may only change epochs."""
    path = Path(resume)
    if path.is_file():
        model_file, run_dir = path, path.parent
    elif path.is_dir():
        found = sorted(path.glob("*_model.pkl"))
        if len(found) != 1:
            raise DrawError(f"--resume {resume}: expected one *_model.pkl file there, "
                            f"found {len(found)}")
        model_file, run_dir = found[0], path
    else:
        raise DrawError(f"--resume {resume}: no such run directory")
    try:
        ckpt = load_checkpoint(model_file)
    except CheckpointError as e:
        raise DrawError(f"--resume: {e}") from e
    stored = ckpt.get("run")
    needed = {"optimizer", "rng", "batch", "epoch_rng", "log", "extensions"}
    if not isinstance(stored, dict) or set(DEFAULTS) - set(stored) or needed - set(ckpt):
        raise DrawError(f"--resume: {model_file} was not saved by train-draw.py (it lacks the "
                        f"run settings or the training state)")
    if given.get("oldmodel") is not None:
        raise DrawError("--resume and --oldmodel cannot be combined: a resumed run continues "
                        "from its own parameters")
    for key, value in given.items():
        if key != "epochs" and value != stored[key]:
            raise DrawError(f"--resume keeps the run's settings: {FLAGS[key]} is {stored[key]!r} "
                            f"there, not {value!r} (leave the flag out)")
    return run_dir, ckpt, {**stored, "epochs": given.get("epochs", stored["epochs"])}


def _subset(images: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    if n is None or n >= images.shape[0]:
        return images
    # random, not the first n: binarized MNIST's test set is sorted by digit
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    return images[pick[:n]]


def _make_run_dir(parent: Path, name: str) -> Path:
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for attempt in range(100):
            # two runs started in the same second get -2, -3, ... rather than one directory
            run_dir = parent / (f"{name}-{stamp}" + (f"-{attempt + 1}" if attempt else ""))
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:
                continue
    except OSError as e:
        raise DrawError(f"cannot create a run directory in {parent}: {e.strerror or e}") from e
    raise DrawError(f"cannot create a run directory in {parent}: too many runs named {name}")


def _write_text(path: Path, text: str) -> None:
    try:
        atomic_write_bytes(path, text.encode())
    except OSError as e:
        raise DrawError(f"cannot write {path}: {e.strerror or e}") from e


def _header(longname: str, settings: dict, plan: "_Plan", n_params: int, fast: bool,
            resumed_at: str | None) -> str:
    cfg, splits, d = plan.cfg, plan.splits, plan.dist
    C, H, W = cfg.channels, cfg.height, cfg.width
    bs = settings["batch_size"]
    lines = [f"\n{'Resuming' if resumed_at else 'Running'} experiment {longname}"]
    for label, value in (
            ("dataset", f"{settings['dataset']} ({splits['train'].shape[0]} train, "
                        f"{splits['valid'].shape[0]} valid, {splits['test'].shape[0]} test "
                        f"images of {C}x{H}x{W})"),
            ("subdirectory", plan.run_path), ("learning rate", f"{settings['learning_rate']:g}"),
            ("attention", settings["attention"] or "none"), ("n_iterations", cfg.n_iter),
            ("encoder dimension", cfg.enc_dim), ("z dimension", cfg.z_dim),
            ("decoder dimension", cfg.dec_dim),
            ("batch size", f"{bs} in all, {bs // d.world_size}-{-(-bs // d.world_size)} per "
                           f"process" if d.enabled else bs),
            ("epochs", settings["epochs"]), ("seed", settings["seed"]),
            ("processes", f"{d.world_size} (torchrun, DistributedDataParallel over "
                          f"{'NCCL' if plan.device.type == 'cuda' else 'gloo'})"
             if d.enabled else None),
            ("device", f"{plan.device.type}, one per process" if d.enabled else plan.device),
            ("forward pass", "fast (draw.fast)" if fast else "plain (the model's own)"),
            ("parameters", f"{n_params:,}"), ("resumed at", resumed_at)):
        if value is not None:
            lines.append(f"{label:>22}: {value}")
    return "\n".join(lines) + "\n"


@dataclass
class _Plan:
    """A checked run: everything `main` needs, gathered before anything is written."""
    settings: dict
    cfg: DrawConfig
    shape: tuple[int, int, int]
    device: torch.device
    run_path: Path | None = None      # the run directory, already there when resuming
    ckpt: dict | None = None          # the checkpoint to resume from
    old: DrawModel | None = None      # the --oldmodel to start from
    dist: Distributed = Distributed()
    splits: dict[str, torch.Tensor] | None = None     # train, valid, test on the device


def _plan(given: dict, resume: str | None, device: str) -> _Plan:
    """Check every setting and read the model files; raise DrawError, write nothing.

    The data are not read yet: under torchrun the processes check their flags alone, before they
    join the process group, and load the data together after (`_load_splits`).
    """
    run_path = ckpt = old = None
    if resume is not None:
        run_path, ckpt, settings = _resume_settings(resume, given)
    else:
        settings = {**DEFAULTS, **given}
    _check(settings)
    dev = resolve_device(device)
    read_N, write_N = parse_attention(settings["attention"])
    C, H, W = dataset_spec(settings["dataset"]).shape
    try:
        cfg = DrawConfig(channels=C, height=H, width=W, n_iter=settings["n_iter"],
                         enc_dim=settings["enc_dim"], dec_dim=settings["dec_dim"],
                         z_dim=settings["z_dim"], read_N=read_N, write_N=write_N)
    except ValueError as e:
        raise DrawError(f"--attention={settings['attention']}: {e}") from e
    if ckpt is not None and DrawConfig.from_dict(ckpt["config"]) != cfg:
        raise DrawError(f"--resume {resume}: the model file's config does not match "
                        f"{settings['dataset']}'s {C}x{H}x{W} images")
    if settings["oldmodel"] is not None and ckpt is None:
        try:
            old, _ = load_model(settings["oldmodel"])
        except CheckpointError as e:
            raise DrawError(f"--oldmodel: {e}") from e
        if old.config != cfg:
            diffs = ", ".join(f"{k} {v} there, {cfg.to_dict()[k]} here"
                              for k, v in old.config.to_dict().items() if cfg.to_dict()[k] != v)
            raise DrawError(f"--oldmodel {settings['oldmodel']} has another configuration: {diffs}")
    return _Plan(settings, cfg, (C, H, W), dev, run_path, ckpt, old)


def _load_splits(settings: dict, data_dir: str | None, d: Distributed,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """The run's train (or its --subset), valid and test images, on `device`.

    Under torchrun the first process of each machine loads first, since it may download and
    convert; the others then read its files.
    """
    data = first_on_each_machine(d, lambda: get_data(settings["dataset"], root=data_dir),
                                 device, what=f"loading {settings['dataset']}")
    # on the device once, rather than copied there at every pass; valid and test stay whole
    return {"train": _subset(data.train, settings["subset"], settings["seed"]).to(device),
            "valid": data.valid.to(device), "test": data.test.to(device)}


def _build_loop(plan: _Plan, longname: str, live_plotting: bool, plot_port: int,
                fast: bool) -> MainLoop:
    """Model, Adam, data order and the classic extensions, in the order they must run."""
    settings, run_path, bs = plan.settings, plan.run_path, plan.settings["batch_size"]
    writer = plan.dist.is_main        # only the main rank prints, shows progress, writes files
    model = DrawModel.from_config(plan.cfg).to(plan.device)
    if plan.old is not None:
        model.load_state_dict(plan.old.state_dict())
    accelerated = None
    if fast:
        try:
            accelerated = accelerate(model)
        except (ValueError, NotImplementedError, RuntimeError) as e:
            if writer:
                print(f"note: the fast path cannot run this model ({e}); training with the "
                      f"model's own forward pass, as with --no-fast", flush=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["learning_rate"])
    generator = torch.Generator().manual_seed(settings["seed"])
    extensions = [ProgressBar(math.ceil(plan.splits["train"].shape[0] / bs))] if writer else []
    extensions += [
        Timing(),
        FinishAfter(after_n_epochs=settings["epochs"]),
        TrainingDataMonitoring(),
        *[DataStreamMonitoring(plan.splits[key], key, bs, plan.device, seed=settings["seed"])
          for key in ("valid", "test") if plan.splits[key].shape[0] > 0],
    ]
    if writer:
        extensions += [
            Printing(),
            SampleCheckpoint(run_path, plan.shape, n=N_SAMPLES, seed=settings["seed"]),
            Checkpoint(run_path, longname, settings),     # last: it saves what the others logged
        ]
        if live_plotting:
            extensions.append(Plot(run_path, port=plot_port))
    train = plan.splits["train"]
    # every rank draws the same global batches from the same generator (draw/training/main_loop.py)
    return MainLoop(model, optimizer,
                    lambda: batches(train, bs, generator=generator, device=plan.device),
                    generator, extensions, grad_clip=settings["grad_clip"], fast=accelerated,
                    dist=plan.dist)


def main(name: str | None = None, dataset: str | None = None, epochs: int | None = None,
         batch_size: int | None = None, learning_rate: float | None = None,
         attention: str | None = None, n_iter: int | None = None, enc_dim: int | None = None,
         dec_dim: int | None = None, z_dim: int | None = None, oldmodel: str | None = None,
         live_plotting: bool = False, seed: int | None = None, device: str = "auto",
         resume: str | None = None, data_dir: str | None = None, plot_port: int = 5006,
         run_dir: str = ".", grad_clip: float | None = None, subset: int | None = None,
         fast: bool = True) -> None:
    """Train DRAW; the keyword arguments are train-draw.py's flags (`main(**vars(args))`).

    A setting left at None takes the classic default (`DEFAULTS`), or on `--resume` the run's
    own value; a resumed run may change only `epochs` (the total to reach), the device, the data
    directory, live plotting, the forward pass (`fast`) and the number of processes.

    Under torchrun every process calls `main` with the same flags; `batch_size` is the global
    batch, split between the processes (draw/training/distributed.py). Only the main process prints and
    writes files.

    Raises
    ------
    DrawError
        For anything the user can fix, before any file is written.
    KeyboardInterrupt
        After a first Ctrl-C has stopped training and the state has been saved.
    """
    place = process_place()
    with reported_once(place):
        _train(place, dict(name=name, dataset=dataset, epochs=epochs, batch_size=batch_size,
                           learning_rate=learning_rate, attention=attention, n_iter=n_iter,
                           enc_dim=enc_dim, dec_dim=dec_dim, z_dim=z_dim, oldmodel=oldmodel,
                           seed=seed, grad_clip=grad_clip, subset=subset),
               resume=resume, device=device, data_dir=data_dir, run_dir=run_dir,
               live_plotting=live_plotting, plot_port=plot_port, fast=fast)


def _train(place: Distributed, flags: dict, resume: str | None, device: str,
           data_dir: str | None, run_dir: str, live_plotting: bool, plot_port: int,
           fast: bool) -> None:
    """`main` in one process: check, join the other processes (if any), train."""
    if not 0 < plot_port < 65536:
        raise DrawError(f"--plot-port must be a TCP port (1-65535), got {plot_port}")
    given = {key: value for key, value in flags.items() if value is not None}
    plan = _plan(given, resume, device)
    settings, ckpt = plan.settings, plan.ckpt
    if ckpt is not None and ckpt["epoch"] >= settings["epochs"] and ckpt["batch"] == 0:
        if place.is_main:
            print(f"{plan.run_path} already has {ckpt['epoch']} epochs; nothing to do "
                  f"(pass --epochs N to train longer)")
        return

    plan.dist, plan.device = init_distributed(plan.device)
    finished = False
    try:
        plan.splits = _load_splits(settings, data_dir, plan.dist, plan.device)
        _run(plan, run_dir, live_plotting, plot_port, fast)
        finished = True
    finally:
        close_distributed(plan.dist, finished)


def _run(plan: _Plan, run_dir: str, live_plotting: bool, plot_port: int, fast: bool) -> None:
    """Everything is valid: from here on the run exists."""
    settings, ckpt, writer = plan.settings, plan.ckpt, plan.dist.is_main
    longname = long_name(settings)
    if ckpt is None:
        # every rank alike: the same initial parameters, and the same training noise
        torch.manual_seed(settings["seed"])
        np.random.seed(settings["seed"])
        random.seed(settings["seed"])
        if writer:
            plan.run_path = _make_run_dir(Path(run_dir), settings["name"] or settings["dataset"])
    loop = _build_loop(plan, longname, live_plotting, plot_port, fast)
    fast = loop.forward is not loop.model     # False also where the fast path fell back
    if writer:
        command = shlex.join([Path(sys.executable).name, *sys.argv])
        args_txt = plan.run_path / "args.txt"
        previous = args_txt.read_text() + "# resumed\n" if ckpt is not None else ""
        _write_text(args_txt, previous + command + "\n")
        _write_text(plan.run_path / "config.json", json.dumps(
            {"name": longname, "config": plan.cfg.to_dict(), "run": settings,
             "device": str(plan.device), "processes": plan.dist.world_size, "fast": fast,
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
        print(_header(longname, settings, plan, n_params, fast, resumed_at), flush=True)
    loop.run()
    if loop.status["interrupted"]:
        if writer:
            launcher = "torchrun --nproc_per_node=K" if plan.dist.enabled else "python"
            print(f"stopped by Ctrl-C at epoch {loop.status['epoch']}, batch "
                  f"{loop.status['batch']}; saved. Continue with: {launcher} train-draw.py "
                  f"--resume {plan.run_path}", file=sys.stderr)
        # the caller (a script, a notebook) stops as for any Ctrl-C, but nothing is lost
        raise KeyboardInterrupt
