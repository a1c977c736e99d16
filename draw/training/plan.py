"""What a training run is before anything is written: its checked settings and model files,
its data, its memory and whether it compiles (run.py then builds and trains it).

`check(flags)` builds the settings (draw/training/settings.py: defaults, a config file, the flags, or a
resumed run's own settings) and reads the model files (`--oldmodel`, `--resume`), raising a
one-line DrawError for anything wrong; `make_plan` adds the device's data, the check of the
run's sizes, the run directory's name and the compile choice (draw/speed.py). Nothing touches
the disk until both have passed, so a bad command line leaves no trace.

`check_run_sizes` is that check for every training script: train-classifier.py calls it too
(draw/training/classify_run.py), so that a size one accepts the other does not refuse.
"""
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from draw.checkpoint import (CheckpointError, draw_config, load_checkpoint, load_model,
                             model_file_config, resolve_device)
from draw.datasets import get_data
from draw.datasets.store import dataset_spec
from draw.errors import DrawError
from draw.memory import ModelConfig, check_inference, check_memory, training_bytes
from draw.model import DrawConfig, DrawModel
from draw.speed import compile_choice
from draw.training.distributed import Distributed, first_on_each_machine
from draw.training.extensions import SampleCheckpoint
from draw.training.lock import check_unlocked
from draw.training.rundir import find_checkpoint, new_run_path, stored_in_config
from draw.training.settings import DrawSettings, RunSettings

# what a checkpoint needs besides its settings to be resumed
TRAINING_STATE = {"optimizer", "rng", "batch", "epoch_rng", "log", "extensions"}
N_SAMPLES = 100     # samples in sample.png and the GIFs, a 10 x 10 grid


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
class Checked:
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
class Plan:
    """A complete run, before anything is written: the checked settings, this process's place
    and device, the data, the run directory (to create, or to continue) and whether its
    glimpses are compiled."""
    checked: Checked
    dist: Distributed
    device: torch.device
    splits: dict[str, torch.Tensor]    # train (or its --subset), valid, test, on the device
    binary: bool                       # every pixel 0 or 1: the bound is one on -log p(x)
    run_path: Path

    @property
    def batches_per_epoch(self) -> int:
        """Training batches per epoch; the last may be smaller."""
        return math.ceil(self.splits["train"].shape[0] / self.checked.settings.batch_size)

    @functools.cached_property
    def compiled(self) -> tuple[bool, str]:
        """Whether the glimpses are compiled, and why (draw.speed.compile_choice), from the
        glimpses left to train."""
        s, ckpt, n = self.checked.settings, self.checked.ckpt, self.batches_per_epoch
        done = 0 if ckpt is None else ckpt["epoch"] * n + ckpt["batch"]          # steps taken
        return compile_choice(s.compile, max(0, s.epochs * n - done) * s.n_iter, self.device)


def check(flags: dict) -> Checked:
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
            old_cfg = model_file_config(settings.oldmodel)
            if old_cfg != cfg:
                diffs = ", ".join(f"{k} {v} there, {cfg.to_dict()[k]} here"
                                  for k, v in old_cfg.to_dict().items() if cfg.to_dict()[k] != v)
                raise DrawError(f"--oldmodel {settings.oldmodel} has another configuration: "
                                f"{diffs}")
            # the run's own model, whose training make_plan checks; built here, before that
            check_inference(cfg, 1, f"the model of --oldmodel {settings.oldmodel}", device)
            old, _ = load_model(settings.oldmodel)
        except CheckpointError as e:
            raise DrawError(f"--oldmodel: {e}") from e
    files = (model_file.name[:-len("_model.pkl")] if model_file is not None
             else settings.name or settings.dataset)
    return Checked(settings, cfg, device, run_path, ckpt, old, files)


def subset(images: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    if n is None or n >= images.shape[0]:
        return images
    # random, not the first n: binarized MNIST's test set is sorted by digit
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    return images[pick[:n]]


def load_splits(s: DrawSettings, d: Distributed,
                device: torch.device) -> tuple[dict[str, torch.Tensor], bool]:
    """The run's train (or its --subset), valid and test images (and their --eval-subset), on
    `device`, and whether the data are binary.

    Under torchrun the first process of each machine loads first, since it may download and
    convert; the others then read its files.
    """
    data = first_on_each_machine(d, lambda: get_data(s.dataset, root=s.data_dir, seed=s.seed),
                                 device, what=f"loading {s.dataset}")
    # on the device once, rather than copied there at every pass; valid and test stay whole,
    # and their --eval-subset is a view into them
    splits = {"train": subset(data.train, s.subset, s.seed).to(device),
              "valid": data.valid.to(device), "test": data.test.to(device)}
    for key in ("valid", "test"):
        splits[f"{key}_subset"] = subset(splits[key], s.eval_subset or None, s.seed)
    return splits, data.binary


def check_run_sizes(cfg: ModelConfig, s: RunSettings, n_train: int, d: Distributed,
                    device: torch.device, pictures: int = 0) -> None:
    """The one check of a training run's sizes, DRAW's and the classifier's alike, once its
    data are loaded and before anything is written: the batch against the `n_train` training
    images, and training (draw/memory.py: the model, Adam, the pass autograd records over
    this process's share of a batch) with the `pictures` bytes its extensions draw every epoch
    against the device's memory. Raises DrawError, one line."""
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


def make_plan(checked: Checked, dist: Distributed, device: torch.device) -> Plan:
    """The data on the device, the run's sizes checked and the run directory named (not
    made); under torchrun every process makes its own."""
    s = checked.settings
    splits, binary = load_splits(s, dist, device)
    check_run_sizes(checked.cfg, s, splits["train"].shape[0], dist, device,
                    pictures=SampleCheckpoint.needs(checked.cfg, N_SAMPLES))
    run_path = checked.run_path or new_run_path(Path(s.run_dir), s.name or s.dataset)
    return Plan(checked, dist, device, splits, binary, run_path)
