"""Turn the settings of `train-classifier.py` into a run, as draw/training/run.py does for DRAW.

Everything the user can get wrong (flags, a config file, `--resume`) is checked before the run
directory is made; the data are then loaded (cluttered-mnist is composed from mnist's files,
batch by batch), and a run lives in `<name>-YYYYmmdd-HHMMSS/`:

    config.json                 the classifier's config and the run's settings
    args.txt                    the command line (one more line per resume)
    <name>_model.pkl            config, parameters, optimiser, RNG and loop state
    <name>_log.pkl              one row per epoch: train_error, valid_error, test_error (percent),
                                train_cross_entropy, ..., time_train_this_epoch
    <name>_log.csv              the same rows as CSV, one column per key
    glimpses.png, glimpses-NNN.png   the paper's Figure 4 on the first test images
    events.out.tfevents.*       with --tensorboard: the log and the glimpses

with <name> the --name (default: the dataset's); the header and config.json carry a long name
such as `cluttered-mnist-classifier-r12-t8-enc256-lr13`. Valid and test are evaluated as in
train-draw.py: on --eval-subset images every --eval-every epochs, on the whole splits after the
last epoch. The training loop,
extensions, checkpoints, resume and torchrun are train-draw.py's (draw/training/main_loop.py);
only the task (draw/training/classify.py) differs. cluttered-mnist's training images are fresh
every epoch: epoch e's are a function of (--seed, e) alone, so a resumed run sees the same ones.
"""
import json
import math
import random
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from draw.checkpoint import (CheckpointError, classifier_config, load_checkpoint, load_classifier,
                             resolve_device, set_rng_state)
from draw.classifier import AttentionClassifier, ClassifierConfig
from draw.datasets import LabelledData, get_labelled, labelled_batches
from draw.datasets.store import dataset_spec
from draw.errors import DrawError
from draw.memory import check_inference
from draw.training.classify import (N_GLIMPSE_IMAGES, ClassifierPrinting, ClassifierSettings,
                                    ClassifyTask, GlimpseCheckpoint, classifier_adam, model_config)
from draw.training.distributed import (Distributed, close_distributed, first_on_each_machine,
                                       init_distributed, process_place, reported_once)
from draw.training.extensions import (Checkpoint, FinishAfter, LearningRateSchedule, ProgressBar,
                                      Timing)
from draw.training.lock import RunLock, check_unlocked
from draw.training.main_loop import MainLoop, load_adam_state
from draw.training.monitoring import DataStreamMonitoring, TrainingDataMonitoring
from draw.training.plan import TRAINING_STATE, check_run_sizes, lr_tag
from draw.training.rundir import (experiment_name, find_checkpoint, make_run_dir, new_run_path,
                                  nothing_to_do, read_text, stored_in_config, write_text)
from draw.training.tensorboard import TensorBoard


def long_name(s: ClassifierSettings) -> str:
    """e.g. `cluttered-mnist-classifier-r12-t8-enc256-lr13` (lr13 = 1e-3, the classic tag)."""
    return (f"{s.dataset}-classifier-r{s.attention}-t{s.n_iter}-enc{s.enc_dim}-"
            f"lr{lr_tag(s.learning_rate)}")


@dataclass(frozen=True)
class _Checked:
    """The settings and the model file to resume from, all checked; nothing written."""
    settings: ClassifierSettings
    cfg: ClassifierConfig
    device: torch.device
    run_path: Path | None         # the run directory when resuming
    ckpt: dict | None             # the checkpoint to resume from
    files: str                    # the model and log files are <files>_model.pkl, _log.pkl


def _check(flags: dict) -> _Checked:
    given = ClassifierSettings.given(flags)
    run_path = ckpt = model_file = None
    if given.get("resume") is not None:
        run_path, model_file = find_checkpoint(given["resume"])
        check_unlocked(run_path)
        if model_file is None:       # killed before its first save: its config.json restarts it
            stored = stored_in_config(run_path)
            settings = ClassifierSettings.resumed(stored, given, str(run_path / "config.json"))
        else:
            try:
                # built to check its parameters: its config, read alone, is checked first
                check_inference(classifier_config(load_checkpoint(model_file), model_file), 1,
                                f"the model of {model_file}")
                _, ckpt = load_classifier(model_file)
            except CheckpointError as e:
                raise DrawError(f"--resume: {e}") from e
            if not isinstance(ckpt.get("run"), dict) or TRAINING_STATE - set(ckpt):
                raise DrawError(f"--resume: {model_file} lacks the run settings or the "
                                f"training state")
            settings = ClassifierSettings.resumed(ckpt["run"], given, str(model_file))
    else:
        settings = ClassifierSettings(**given)
    device = resolve_device(settings.device)
    cfg = model_config(settings, dataset_spec(settings.dataset).shape, n_classes=10)
    if ckpt is not None and ClassifierConfig.from_dict(ckpt["config"]) != cfg:
        raise DrawError(f"--resume {settings.resume}: the model file's config does not match "
                        f"its settings")
    files = (model_file.name[:-len("_model.pkl")] if model_file is not None
             else settings.name or settings.dataset)
    return _Checked(settings, cfg, device, run_path, ckpt, files)


def _load_data(s: ClassifierSettings, d: Distributed, device: torch.device) -> LabelledData:
    """The labelled splits: train cut to --subset, and valid / test with their --eval-subset
    as `valid_subset` / `test_subset` (random, seeded, the same ones every evaluation)."""
    data = first_on_each_machine(d, lambda: get_labelled(s.dataset, root=s.data_dir,
                                                         seed=s.seed),
                                 device, what=f"loading {s.dataset}")

    def pick(split, n):
        if n is None or n >= len(split):
            return split
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(s.seed))
        return split.subset(order[:n])

    data.train = pick(data.train, s.subset)
    data.valid_subset = pick(data.valid, s.eval_subset or None)
    data.test_subset = pick(data.test, s.eval_subset or None)
    return data


def _build_loop(s: ClassifierSettings, cfg: ClassifierConfig, data: LabelledData,
                dist: Distributed, device: torch.device, run_path: Path, files: str
                ) -> MainLoop:
    """Model, Adam, data order and extensions, in the order they must run."""
    bs, writer = s.batch_size, dist.is_main
    model = AttentionClassifier.from_config(cfg).to(device)
    task = ClassifyTask(model, dist)
    optimizer = classifier_adam(model, s)
    generator = torch.Generator().manual_seed(s.seed)
    n_batches = math.ceil(len(data.train) / bs)
    extensions = [ProgressBar(n_batches)] if writer else []
    extensions += [Timing(), FinishAfter(after_n_epochs=s.epochs),
                   LearningRateSchedule(optimizer, s.learning_rate, s.lr_warmup, s.lr_decay,
                                        n_batches),
                   TrainingDataMonitoring()]
    for key in ("valid", "test"):
        # on --eval-subset every --eval-every epochs, on the whole split after the last
        whole, part = getattr(data, key), getattr(data, f"{key}_subset")
        extensions.append(DataStreamMonitoring(
            lambda split=part: labelled_batches(split, bs, device=device), key, device,
            seed=s.seed, every=s.eval_every,
            final=lambda split=whole: labelled_batches(split, bs, device=device),
            sizes=(math.ceil(len(part) / bs), math.ceil(len(whole) / bs)), progress=writer))
    if writer:
        first, _ = next(labelled_batches(data.test, N_GLIMPSE_IMAGES, device=device))
        extensions += [
            ClassifierPrinting(),
            # the model file commits an epoch; the log and the picture follow it
            Checkpoint(run_path, files, s.stored()),
            GlimpseCheckpoint(run_path, first, (cfg.channels, cfg.height, cfg.width)),
        ]
        if s.tensorboard:
            extensions.append(TensorBoard(run_path, "glimpses-{epoch:03d}.png", "glimpses"))
    loop = MainLoop(task, optimizer, None, generator, extensions, grad_clip=s.grad_clip)
    # every rank draws the same global batches; the training images of epoch e are epoch e's
    loop.epoch_batches = lambda: labelled_batches(data.train, bs, generator=generator,
                                                  epoch=loop.status["epoch"], device=device)
    return loop


def main(**flags) -> None:
    """Train the classifier; `flags` are train-classifier.py's, by ClassifierSettings field
    name, plus `config`. Raises DrawError, before anything is written, for what the user can
    fix, and KeyboardInterrupt after a first Ctrl-C has stopped training and saved it."""
    place = process_place()
    with reported_once(place):
        checked = _check(flags)
        s, ckpt = checked.settings, checked.ckpt
        if nothing_to_do(checked.run_path, ckpt, s.epochs, place.is_main):
            return
        dist, device = init_distributed(checked.device)
        finished = False
        try:
            data = _load_data(s, dist, device)
            # as train-draw.py's, with the picture this run draws every epoch
            check_run_sizes(checked.cfg, s, len(data.train), dist, device,
                            pictures=GlimpseCheckpoint.needs(
                                checked.cfg, f"glimpses.png of {s.n_iter:,} glimpses (--niter), "
                                             f"one column each,"))
            run_path = checked.run_path or new_run_path(Path(s.run_dir), s.name or s.dataset)
            _run(checked, dist, device, data, run_path)
            finished = True
        finally:
            close_distributed(dist, finished)


def _run(checked: _Checked, dist: Distributed, device: torch.device, data: LabelledData,
         run_path: Path) -> None:
    """Everything is valid: from here on the run exists. The main process holds the run
    directory's lock while it trains."""
    lock = None
    try:
        if dist.is_main:
            if checked.run_path is None:
                run_path = make_run_dir(run_path)
            lock = RunLock(run_path).acquire()
        _train(checked, dist, device, data, run_path)
    finally:
        if lock is not None:
            lock.release()


def _train(checked: _Checked, dist: Distributed, device: torch.device, data: LabelledData,
           run_path: Path) -> None:
    s, cfg, ckpt, writer = checked.settings, checked.cfg, checked.ckpt, dist.is_main
    longname = experiment_name(checked.run_path, long_name(s))
    s.apply_to_process()          # threads and denormal flushing, process-wide
    if ckpt is None:
        torch.manual_seed(s.seed)
        np.random.seed(s.seed)
        random.seed(s.seed)
    loop = _build_loop(s, cfg, data, dist, device, run_path, checked.files)
    if writer:
        command = shlex.join([Path(sys.executable).name, *sys.argv])
        args_txt = run_path / "args.txt"
        previous = ""
        if checked.run_path is not None:
            previous = read_text(args_txt) + ("# resumed\n" if ckpt is not None else
                                               "# restarted: killed before its first save\n")
        write_text(args_txt, previous + command + "\n")
        write_text(run_path / "config.json", json.dumps(
            {"name": longname, "config": cfg.to_dict(), "run": s.stored(),
             "device": str(device), "processes": dist.world_size,
             "torch": torch.__version__}, indent=2) + "\n")
    resumed_at = None
    if ckpt is not None:
        loop.model.load_state_dict(ckpt["model"])
        load_adam_state(loop.optimizer, ckpt["optimizer"])
        loop.load_state_dict(ckpt)
        set_rng_state(ckpt["rng"], loop.generator)      # last: building the model drew from it
        resumed_at = f"epoch {ckpt['epoch']}" + (f", batch {ckpt['batch']}" if ckpt["batch"]
                                                 else "")
    if writer:
        n_params = sum(p.numel() for p in loop.model.parameters())
        lines = [f"\n{'Resuming' if resumed_at else 'Running'} experiment {longname}"]
        for label, value in (
                ("dataset", f"{s.dataset} ({len(data.train)} train, {len(data.valid)} valid, "
                            f"{len(data.test)} test images of "
                            f"{cfg.channels}x{cfg.height}x{cfg.width})"),
                ("subdirectory", run_path), ("glimpses", f"{cfg.n_iter} of "
                                                         f"{cfg.read_N}x{cfg.read_N}"),
                ("LSTM dimension", cfg.enc_dim),
                ("learning rate", f"{s.describe_lr()}; read head x{s.read_lr:g}"),
                ("batch size", s.batch_size), ("epochs", s.epochs), ("seed", s.seed),
                ("evaluation", f"every {s.eval_every} epoch(s) on "
                               f"{s.eval_subset or 'all'} valid and test images, all after "
                               f"the last"),
                ("processes", dist.world_size if dist.enabled else None),
                ("device", device), ("parameters", f"{n_params:,}"),
                ("resumed at", resumed_at)):
            if value is not None:
                lines.append(f"{label:>22}: {value}")
        print("\n".join(lines) + "\n", flush=True)
    loop.run()
    if loop.status["interrupted"]:
        if writer:
            print(f"stopped by Ctrl-C at epoch {loop.status['epoch']}, batch "
                  f"{loop.status['batch']}; saved. Continue with: python train-classifier.py "
                  f"--resume {run_path}", file=sys.stderr)
        raise KeyboardInterrupt
