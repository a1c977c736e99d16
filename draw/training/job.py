"""What a kind of training run adds to the run scaffold (draw/training/run.py): a `Job`.

DRAW's is draw_job.py, the classifier's classify.py; a third kind of run is a third Job, with
its settings (a RunSettings subclass), its task (task.py) and this class's methods.
"""
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from draw.memory import ModelConfig
from draw.training.distributed import Distributed
from draw.training.extensions import Printing
from draw.training.settings import RunSettings


def lr_tag(value: float) -> str:
    """The classic learning-rate tag of the long names: leading digit, minus the exponent.

    >>> lr_tag(1e-3), lr_tag(3e-4), lr_tag(0.005)
    ('13', '34', '53')
    """
    exponent = math.floor(math.log10(value))
    return f"{f'{value:e}'[0]}{-exponent}"


@dataclass
class Data:
    """A run's splits on the device, with valid and test also cut to --eval-subset, and the
    job's `batches(split, batch_size, generator=, epoch=, device=)`."""
    train: Any
    valid: Any
    test: Any
    batches: Callable
    binary: bool = False          # every pixel 0 or 1 (DRAW's bound is one on -log p(x))
    valid_subset: Any = None
    test_subset: Any = None

    def cut(self, s: RunSettings, take: Callable) -> "Data":
        """Cut train to --subset and valid / test to --eval-subset with `take(split, index)`:
        seeded random picks, not the first n (binarized MNIST's test set is sorted by digit)."""
        def pick(split, n):
            if n is None or n >= len(split):
                return split
            order = torch.randperm(len(split), generator=torch.Generator().manual_seed(s.seed))
            return take(split, order[:n])
        return replace(self, train=pick(self.train, s.subset),
                       valid_subset=pick(self.valid, s.eval_subset or None),
                       test_subset=pick(self.test, s.eval_subset or None))


class Parts(NamedTuple):
    """What a job builds for the loop: the task, its optimiser, the extensions that draw its
    picture every epoch (main process only) and its header lines."""
    task: Any
    optimizer: torch.optim.Optimizer
    pictures: list
    header: list[tuple[str, Any]]


class Job:
    """What a kind of training run adds to the scaffold; subclasses fill in every method."""
    script: str                              # for the message of a stopped run
    settings_class: type[RunSettings]
    printing = Printing                      # its one line per epoch
    picture: tuple[str, str]                 # TensorBoard's picture files and tag
    foreign = ""                             # why a model file without training state is so

    def long_name(self, s: RunSettings) -> str:
        raise NotImplementedError

    def model_config(self, s: RunSettings, shape: tuple[int, int, int]) -> ModelConfig:
        """The model config of the settings for images of `shape`; DrawError if invalid."""
        raise NotImplementedError

    def read_model_file(self, path: Path) -> dict:
        """The checkpoint of `--resume`; CheckpointError where it is not this job's."""
        raise NotImplementedError

    def start_from(self, s: RunSettings, cfg: ModelConfig,
                   device: torch.device) -> tuple[nn.Module, dict] | None:
        """A model a fresh run starts from (DRAW's --oldmodel), checked, and its training
        history (draw.checkpoint.training_history); None by default."""
        return None

    def load_data(self, s: RunSettings, dist: Distributed, device: torch.device) -> Data:
        raise NotImplementedError

    def picture_bytes(self, cfg: ModelConfig, s: RunSettings) -> int:
        """Bytes of the picture drawn every epoch, checked with the run's other sizes."""
        raise NotImplementedError

    def build(self, plan) -> Parts:
        """The model, task, optimiser, pictures and header lines of `plan` (run.py's Plan)."""
        raise NotImplementedError
