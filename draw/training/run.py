"""One training run, whatever it trains: checks, data, run directory, lock, loop, resume, Ctrl-C.

train-draw.py and train-classifier.py both call `train(job, flags)`; a `Job`
(draw/training/job.py) says what differs: DRAW's is draw_job.py, the classifier's classify.py.

`train` checks everything first (settings, model files, device, data, memory, the run
directory's name), so a bad command line leaves no trace. A run then lives in
`<name>-YYYYmmdd-HHMMSS/` (name: --name or the dataset, as in the classic repository):

    .lock                    held while a process trains here (draw/training/lock.py)
    config.json              the long name, the resolved model config and run settings
    args.txt                 the command line (one more line per resume)
    <name>_model.pkl         config, parameters, optimiser, RNG and loop state (draw/checkpoint.py)
    <name>_log.pkl           one row of numbers per epoch, and the same as <name>_log.csv
    pictures                 the job's: DRAW's samples, the classifier's glimpses
    events.out.tfevents.*    with --tensorboard (tensorboard.py)

A resumed run goes on writing the files it found (older runs named them by the long name); one
killed before its first model file restarts from its config.json. Under `torchrun` the run is
data-parallel (distributed.py): --bs is the global batch, the steps are a single process's up
to rounding, only rank 0 prints and writes, and a resume may use another number of processes.
"""
import json
import math
import random
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from draw.checkpoint import CheckpointError, describe_history, resolve_device, set_rng_state
from draw.datasets.store import dataset_spec
from draw.errors import DrawError, Interrupted
from draw.memory import ModelConfig, check_memory, training_bytes
from draw.model import DrawConfig
from draw.precision import matmul_choice, precision_choice
from draw.training.distributed import (Distributed, close_distributed, init_distributed,
                                       process_place, reported_once)
from draw.training.extensions import (Checkpoint, DataStreamMonitoring, FinishAfter,
                                      LearningRateSchedule, Plot, ProgressBar, Timing,
                                      TrainingDataMonitoring)
from draw.training.job import Data, Job, Parts
from draw.training.lock import RunLock, check_unlocked
from draw.training.main_loop import MainLoop, load_adam_state
from draw.training.rundir import (KEPT, experiment_name, find_checkpoint, make_run_dir,
                                  new_run_path, nothing_to_do, read_text, stored_in_config,
                                  write_text)
from draw.training.settings import RunSettings
from draw.training.tensorboard import TensorBoard

# what a checkpoint needs besides its settings to be resumed
TRAINING_STATE = {"optimizer", "rng", "batch", "epoch_rng", "log", "extensions"}


@dataclass(frozen=True)
class Checked:
    """The command line and the model files it names, checked; under torchrun by every process
    alone, before they join the process group."""
    settings: RunSettings
    cfg: ModelConfig
    device: torch.device
    run_path: Path | None         # the run directory when resuming
    ckpt: dict | None             # the checkpoint to resume from
    start: nn.Module | None       # a model to start from (DRAW's --oldmodel)
    started_from: dict | None     # its training history (draw.checkpoint.training_history)
    files: str                    # <files>_model.pkl, <files>_log.pkl


@dataclass(frozen=True)
class Plan:
    """A complete run before anything is written: its process's place, device, data and run
    directory (to create, or to continue)."""
    job: Job
    checked: Checked
    dist: Distributed
    device: torch.device
    data: Data
    run_path: Path

    @property
    def batches_per_epoch(self) -> int:
        """Training batches per epoch; the last may be smaller."""
        return math.ceil(len(self.data.train) / self.checked.settings.batch_size)

    @property
    def steps_left(self) -> int:
        """Training steps still to take: --epochs less the resumed checkpoint's, at least 0."""
        ckpt, n = self.checked.ckpt, self.batches_per_epoch
        done = 0 if ckpt is None else ckpt["epoch"] * n + ckpt["batch"]
        return max(0, self.checked.settings.epochs * n - done)


def _resumed(job: Job, given: dict) -> tuple[RunSettings, Path, dict | None, Path | None]:
    run_path, model_file = find_checkpoint(given["resume"])
    if run_path.name == KEPT and any(run_path.parent.glob("*_model.pkl")):
        # resumed there, the run would go on in epochs/ and overwrite the kept file
        raise DrawError(f"--resume {given['resume']}: a file --keep-every kept; resume the "
                        f"run ({run_path.parent}), or start a new one from this file with "
                        f"--oldmodel")
    check_unlocked(run_path)
    if model_file is None:      # killed before its first save: its config.json restarts it
        stored = stored_in_config(run_path)
        return (job.settings_class.resumed(stored, given, str(run_path / "config.json")),
                run_path, None, None)
    try:
        ckpt = job.read_model_file(model_file)
    except CheckpointError as e:
        raise DrawError(f"--resume: {e}") from e
    if not isinstance(ckpt.get("run"), dict) or TRAINING_STATE - set(ckpt):
        raise DrawError(f"--resume: {model_file} lacks the run settings or the training "
                        f"state{job.foreign}")
    settings = job.settings_class.resumed(ckpt["run"], given, str(model_file))
    return settings, run_path, ckpt, model_file


def check(job: Job, flags: dict) -> Checked:
    """Build and check the settings and read the model files; raise DrawError, write nothing."""
    given = job.settings_class.given(flags)
    run_path = ckpt = model_file = None
    if given.get("resume") is not None:
        settings, run_path, ckpt, model_file = _resumed(job, given)
    else:
        settings = job.settings_class(**given)
    device = resolve_device(settings.device)
    precision_choice(settings.precision, device)       # bf16-mixed on another device: DrawError
    C, H, W = dataset_spec(settings.dataset).shape
    cfg = job.model_config(settings, (C, H, W))
    if ckpt is not None and type(cfg).from_dict(ckpt["config"]) != cfg:
        raise DrawError(f"--resume {settings.resume}: the model file's config does not match "
                        f"its settings for {settings.dataset}'s {C}x{H}x{W} images")
    if ckpt is None:
        start, started_from = job.start_from(settings, cfg, device) or (None, None)
    else:                         # resumed: the history its first session recorded, if any
        start, started_from = None, ckpt.get("started_from")
    files = (model_file.name[:-len("_model.pkl")] if model_file is not None
             else settings.name or settings.dataset)
    return Checked(settings, cfg, device, run_path, ckpt, start, started_from, files)


def check_run_sizes(cfg: ModelConfig, s: RunSettings, n_train: int, d: Distributed,
                    device: torch.device, pictures: int = 0) -> None:
    """The one check of a run's sizes, before anything is written: the batch against the
    `n_train` training images, and the memory of training this process's share of a batch
    (draw/memory.py) plus the `pictures` bytes drawn every epoch. DrawError, one line."""
    if s.batch_size > n_train:
        raise DrawError(f"--bs {s.batch_size} is larger than the training set ({n_train} "
                        f"images{' with --subset' if s.subset else ''})")
    per_process = -(-s.batch_size // d.world_size)
    if isinstance(cfg, DrawConfig):
        sizes = f"enc {cfg.enc_dim}, dec {cfg.dec_dim}, z {cfg.z_dim}"
    else:
        sizes = f"read {cfg.read_N}x{cfg.read_N}, LSTM {cfg.enc_dim}"
    check_memory(training_bytes(cfg, per_process) + pictures,
                 f"training this model (T={cfg.n_iter}, {sizes}) on batches of {per_process}",
                 device)


def make_plan(job: Job, checked: Checked, dist: Distributed, device: torch.device) -> Plan:
    """The data on the device, the sizes checked and the run directory named, not made."""
    s = checked.settings
    data = job.load_data(s, dist, device)
    check_run_sizes(checked.cfg, s, len(data.train), dist, device,
                    pictures=job.picture_bytes(checked.cfg, s))
    run_path = checked.run_path or new_run_path(Path(s.run_dir), s.name or s.dataset)
    return Plan(job, checked, dist, device, data, run_path)


def train(job: Job, flags: dict) -> None:
    """Train a job; `flags` are its script's, by settings field name, plus `config`, the same
    in every process under torchrun. Raises DrawError for anything the user can fix, before
    any file is written, and Interrupted after a Ctrl-C has stopped training and saved it."""
    place = process_place()
    with reported_once(place):
        checked = check(job, flags)
        if nothing_to_do(checked.run_path, checked.ckpt, checked.settings.epochs,
                         place.is_main):
            return
        dist, device = init_distributed(checked.device)
        finished = False
        try:
            _run(make_plan(job, checked, dist, device))
            finished = True
        finally:
            close_distributed(dist, finished)


def _run(plan: Plan) -> None:
    """From here on the run exists; the main process holds its directory's lock."""
    lock = None
    try:
        if plan.dist.is_main:
            if plan.checked.run_path is None:
                plan = replace(plan, run_path=make_run_dir(plan.run_path))
            lock = RunLock(plan.run_path).acquire()
        _train(plan)
    finally:
        if lock is not None:
            lock.release()


def _monitors(plan: Plan) -> list[DataStreamMonitoring]:
    """Valid and test: their --eval-subset every --eval-every epochs, whole after the last."""
    s, data, device = plan.checked.settings, plan.data, plan.device
    bs, monitors = s.batch_size, []
    for key in ("valid", "test"):
        whole, part = getattr(data, key), getattr(data, f"{key}_subset")
        if len(whole) == 0:
            continue
        monitors.append(DataStreamMonitoring(
            lambda split=part: data.batches(split, bs, device=device), key, device,
            seed=s.seed, every=s.eval_every,
            final=lambda split=whole: data.batches(split, bs, device=device),
            sizes=(math.ceil(len(part) / bs), math.ceil(len(whole) / bs)),
            progress=plan.dist.is_main))
    return monitors


def _build_loop(plan: Plan, parts: Parts) -> MainLoop:
    """The loop and its extensions, in the order they must run."""
    s, run_path, n_batches = plan.checked.settings, plan.run_path, plan.batches_per_epoch
    writer = plan.dist.is_main        # only the main rank prints, shows progress, writes files
    extensions = [ProgressBar(n_batches)] if writer else []
    extensions += [Timing(), FinishAfter(after_n_epochs=s.epochs),
                   LearningRateSchedule(parts.optimizer, s.learning_rate, s.lr_warmup,
                                        s.lr_decay, n_batches),
                   TrainingDataMonitoring(), *_monitors(plan)]
    if writer:
        # the model file commits an epoch; the log and the pictures follow it
        extensions += [plan.job.printing(),
                       Checkpoint(run_path, plan.checked.files, s.stored(),
                                  started_from=plan.checked.started_from,
                                  keep_every=s.keep_every),
                       *parts.pictures]
        if s.tensorboard:
            extensions.append(TensorBoard(run_path, *plan.job.picture))
        if s.live_plotting:
            extensions.append(Plot(run_path, port=s.plot_port))
    generator = torch.Generator().manual_seed(s.seed)
    loop = MainLoop(parts.task, parts.optimizer, None, generator, extensions,
                    grad_clip=s.grad_clip, precision=s.precision,
                    matmul_precision=s.matmul_precision)
    # every rank draws the same global batches from the same generator (main_loop.py); the
    # images of epoch e are epoch e's (svhn-multi's random patches, cluttered-mnist's scenes)
    loop.epoch_batches = lambda: plan.data.batches(plan.data.train, s.batch_size,
                                                   generator=generator,
                                                   epoch=loop.status["epoch"],
                                                   device=plan.device)
    return loop


def _write_run_files(plan: Plan, longname: str) -> None:
    """args.txt, one more line per resume, and config.json."""
    ckpt = plan.checked.ckpt
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    args_txt = plan.run_path / "args.txt"
    previous = ""
    if plan.checked.run_path is not None:
        previous = read_text(args_txt) + ("# resumed\n" if ckpt is not None else
                                           "# restarted: killed before its first save\n")
    write_text(args_txt, previous + command + "\n")
    write_text(plan.run_path / "config.json", json.dumps(
        {"name": longname, "config": plan.checked.cfg.to_dict(),
         "run": plan.checked.settings.stored(), "device": str(plan.device),
         "processes": plan.dist.world_size, "torch": torch.__version__}
        | ({"started_from": plan.checked.started_from} if plan.checked.started_from else {}),
        indent=2) + "\n")


def _resume(plan: Plan, loop: MainLoop) -> str:
    """Load the checkpoint's state into the loop; where it was, for the header."""
    ckpt = plan.checked.ckpt
    loop.model.load_state_dict(ckpt["model"])
    load_adam_state(loop.optimizer, ckpt["optimizer"])
    loop.load_state_dict(ckpt)
    # last: building the model drew from the global generator
    set_rng_state(ckpt["rng"], loop.generator)
    if plan.dist.enabled and plan.device.type == "cuda" and ckpt["rng"]["cuda"]:
        # the training noise comes from each rank's own GPU generator, all of which drew
        # alike; the main rank saved its GPU's state first (cuda:0, as LOCAL_RANK 0)
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"][0], plan.device)
    # the rate of the next step: a resume may change --lr and --lr-decay, which act at once
    (schedule,) = [e for e in loop.extensions if isinstance(e, LearningRateSchedule)]
    return (f"{position(ckpt['epoch'], ckpt['batch'])}; learning rate now "
            f"{schedule.rate(loop.status['iteration']):.3g}")


def position(epochs_done: int, batch: int, batches: int | None = None) -> str:
    """Where a run stands, as its progress bar counts: epoch E is the one in progress, batch B
    of its `batches`; the Ctrl-C message and a resumed run's header say it alike."""
    if not batch:
        return f"after epoch {epochs_done}"
    return f"in epoch {epochs_done + 1} after batch {batch}" + (f" of {batches}" if batches
                                                                 else "")


def _header(plan: Plan, parts: Parts, longname: str, resumed_at: str | None) -> str:
    s, cfg, data, d = plan.checked.settings, plan.checked.cfg, plan.data, plan.dist
    bs = s.batch_size
    n_params = sum(p.numel() for p in parts.task.model.parameters())
    lines = [f"\n{'Resuming' if resumed_at else 'Running'} experiment {longname}"]
    for label, value in (
            ("dataset", f"{s.dataset} ({len(data.train)} train, {len(data.valid)} valid, "
                        f"{len(data.test)} test images of {cfg.channels}x{cfg.height}x"
                        f"{cfg.width})"),
            ("subdirectory", plan.run_path), *parts.header,
            ("batch size", f"{bs} in all, {bs // d.world_size}-{-(-bs // d.world_size)} per "
                           f"process" if d.enabled else bs),
            ("epochs", s.epochs), ("seed", s.seed),
            ("processes", f"{d.world_size} (torchrun, DistributedDataParallel over "
                          f"{'NCCL' if plan.device.type == 'cuda' else 'gloo'})"
             if d.enabled else None),
            ("device", f"{plan.device.type}, one per process" if d.enabled else plan.device),
            ("precision", precision_choice(s.precision, plan.device)[1]),
            ("matmul precision", matmul_choice(s.matmul_precision, plan.device)),
            ("CPU threads", torch.get_num_threads()),
            ("flush denormals", "on" if s.flush_denormal else "off"),
            ("evaluation", f"every {s.eval_every} epoch(s) on {len(data.valid_subset)} valid "
                           f"and {len(data.test_subset)} test images; the whole splits after "
                           f"the last"),
            ("kept model files", f"every {s.keep_every} epoch(s), in "
                                 f"{plan.run_path / 'epochs'}" if s.keep_every else None),
            ("parameters", f"{n_params:,}"),
            ("starts from", plan.checked.started_from and describe_history(
                plan.checked.started_from)),
            ("resumed at", resumed_at)):
        if value is not None:
            lines.append(f"{label:>22}: {value}")
    return "\n".join(lines) + "\n"


def _train(plan: Plan) -> None:
    s, ckpt, writer = plan.checked.settings, plan.checked.ckpt, plan.dist.is_main
    longname = experiment_name(plan.checked.run_path, plan.job.long_name(s))
    s.apply_to_process()          # threads and denormal flushing, process-wide
    if ckpt is None:
        # every rank alike: the same initial parameters, and the same training noise
        torch.manual_seed(s.seed)
        np.random.seed(s.seed)
        random.seed(s.seed)
    parts = plan.job.build(plan)
    loop = _build_loop(plan, parts)
    if writer:
        _write_run_files(plan, longname)
    resumed_at = None if ckpt is None else _resume(plan, loop)
    if writer:
        print(_header(plan, parts, longname, resumed_at), flush=True)
    loop.run()
    if loop.status["interrupted"]:
        launcher = "torchrun --nproc_per_node=K" if plan.dist.enabled else "python"
        status = loop.status
        where = position(status["epoch"], status["batch"], plan.batches_per_epoch)
        # the caller (a script, a notebook) stops as for any Ctrl-C, but nothing is lost
        if status["finish_requested"]:      # it came while the last epoch was saved
            raise Interrupted(f"Ctrl-C {where}, the last: the run is complete and saved in "
                              f"{plan.run_path}")
        raise Interrupted(f"stopped by Ctrl-C {where}; saved. Continue with: {launcher} "
                          f"{plan.job.script} --resume {plan.run_path}")
