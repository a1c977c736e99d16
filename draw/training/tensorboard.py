"""TensorBoard event files of a run (`--tensorboard`): the log's numbers and a picture per epoch.

The extension reads what the others left: the log's rows and each epoch's picture
(`epoch-NNN.png`, `glimpses-NNN.png`). Each number is a scalar at step = epoch, its tag the log
key under a section that keeps the dashboard readable (a T = 64 run has 192 KL terms):
objective/, kl_per_step/, optimizer/ and time/. TensorBoard is optional: `require_tensorboard`
says how to install it, before a run writes anything.
"""
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from draw.errors import DrawError
from draw.training.simple_extension import SimpleExtension

INSTALL = 'pip install -e ".[tensorboard]" (or pip install tensorboard)'
OPTIMIZER_KEYS = ("train_total_gradient_norm", "train_total_step_norm", "learning_rate")


def require_tensorboard() -> None:
    """DrawError, one line saying how to install it, where the tensorboard package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise DrawError(f"--tensorboard needs the tensorboard package: {INSTALL}")


def scalar_tag(key: str) -> str | None:
    """The TensorBoard tag of a log key, None for the counters, which are not curves."""
    if key in ("epoch", "iteration") or key.endswith("_examples"):
        return None
    if "_kl_term_" in key:
        section = "kl_per_step"
    elif key in OPTIMIZER_KEYS:
        section = "optimizer"
    elif key.startswith("time_"):
        section = "time"
    else:
        section = "objective"
    return f"{section}/{key}"


class TensorBoard(SimpleExtension):
    """Write every row of the log, and its epoch's picture (`picture`, e.g.
    "epoch-{epoch:03d}.png", tagged `picture_tag`), as events in `run_dir`; after the extensions
    that fill the log and draw the pictures.

    A run, fresh or resumed, starts by writing all the log's rows, purging an earlier session's
    events (purge_step), so the events match the log even after a kill.
    """

    default_triggers = ("before_training", "after_epoch", "after_training", "on_error")

    def __init__(self, run_dir, picture: str, picture_tag: str, **kwargs):
        super().__init__(**kwargs)
        self.run_dir, self.picture, self.picture_tag = Path(run_dir), picture, picture_tag
        self.writer = None

    def do(self, which_callback: str, *args) -> None:
        if which_callback == "before_training":
            # imported here: tensorboard is optional, and its import is slow
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=0)
            for row in self.main_loop.log:
                self._write(row)
            self.writer.flush()
        elif which_callback == "after_epoch" and self.writer is not None:
            self._write(self.main_loop.log[-1])
            self.writer.flush()
        elif which_callback in ("after_training", "on_error") and self.writer is not None:
            self.writer.close()
            self.writer = None

    def _write(self, row: dict) -> None:
        epoch = row["epoch"]
        for key, value in row.items():
            tag = scalar_tag(key)
            if tag is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, value, epoch)
        path = self.run_dir / self.picture.format(epoch=epoch)
        if path.exists():
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))                 # (H, W, 3) uint8
            self.writer.add_image(self.picture_tag, pixels, epoch, dataformats="HWC")
