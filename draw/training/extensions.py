"""Extensions of the main loop, with the classic Blocks names; they talk through the log.

Each is a SimpleExtension (draw/training/simple_extension.py); the monitoring ones live in
draw/training/monitoring.py and are importable from here too.
"""
import math
import os
import shutil
import time
from functools import partial
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from draw.atomic import atomic_path
from draw.checkpoint import rng_state, save_checkpoint, save_log, save_log_csv
from draw.errors import DrawError
from draw.outputs.plotting import (check_gif_duration, image_grid, sampling_frames, save_gif,
                                   save_png)
from draw.outputs.sampling import prior_noise, sampling_bytes
from draw.training.monitoring import DataStreamMonitoring, TrainingDataMonitoring  # noqa: F401
from draw.training.rundir import kept_path
from draw.training.simple_extension import SimpleExtension


class Timing(SimpleExtension):
    """Record `time_train_this_epoch` (seconds of training steps) and `time_total` (wall-clock
    seconds over all sessions). First, so the epoch's time excludes evaluation and saving."""

    default_triggers = ("before_training", "before_epoch", "after_epoch")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.total = 0.0           # wall time of earlier sessions of this run
        self.epoch_elapsed = 0.0   # training time of this epoch before a mid-epoch resume
        self.session_start = self.epoch_start = time.perf_counter()

    def do(self, which_callback: str, *args) -> None:
        now = time.perf_counter()
        if which_callback == "before_training":
            self.session_start = now
        elif which_callback == "before_epoch":
            self.epoch_start = now
        elif which_callback == "after_epoch":
            row = self.main_loop.log[-1]
            row["time_train_this_epoch"] = self.epoch_elapsed + now - self.epoch_start
            row["time_total"] = self.total + now - self.session_start
            self.epoch_elapsed = 0.0

    def state_dict(self) -> dict:
        now = time.perf_counter()
        in_epoch = self.main_loop.status["batch"] > 0
        return {"total": self.total + now - self.session_start,
                "epoch_elapsed": self.epoch_elapsed + (now - self.epoch_start if in_epoch else 0.0)}

    def load_state_dict(self, state: dict) -> None:
        self.total = state.get("total", 0.0)
        self.epoch_elapsed = state.get("epoch_elapsed", 0.0)


class FinishAfter(SimpleExtension):
    """Request the end of training after a number of epochs (or batches), as a log record."""

    default_triggers = ("before_training", "after_epoch")

    def __init__(self, after_n_epochs: int | None = None, after_n_batches: int | None = None,
                 **kwargs):
        super().__init__(every_n_batches=after_n_batches, **kwargs)
        self.after_n_epochs = after_n_epochs

    def do(self, which_callback: str, *args) -> None:
        status = self.main_loop.status
        done = which_callback == "after_batch" or (
            self.after_n_epochs is not None and status["epoch"] >= self.after_n_epochs)
        if done:
            status["finish_requested"] = True
            self.main_loop.log[-1]["training_finish_requested"] = True


class LearningRateSchedule(SimpleExtension):
    """Set the learning rate before every step i = 0, 1, ... from the step count alone (Blocks'
    SharedVariableModifier), so a resumed run continues the schedule with nothing saved:

        lr_i = lr * min(1, (i + 1) / warmup) * decay ** (i // batches_per_epoch)

    Each epoch's log row gets its last step's `learning_rate`; a parameter group with an
    `lr_scale` (--read-lr, --window-lr) takes that multiple of the rate."""

    default_triggers = ("before_training", "after_batch", "after_epoch")

    def __init__(self, optimizer, lr: float, warmup: int = 0, decay: float = 1.0,
                 batches_per_epoch: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.optimizer, self.lr = optimizer, lr
        self.warmup, self.decay, self.batches_per_epoch = warmup, decay, batches_per_epoch

    def rate(self, i: int) -> float:
        warm = min(1.0, (i + 1) / self.warmup) if self.warmup else 1.0
        return self.lr * warm * self.decay ** (i // self.batches_per_epoch)

    def do(self, which_callback: str, *args) -> None:
        i = self.main_loop.status["iteration"]       # the number of steps taken
        if which_callback == "after_epoch":
            self.main_loop.log[-1]["learning_rate"] = self.rate(i - 1)
            return
        for group in self.optimizer.param_groups:
            group["lr"] = self.rate(i) * group.get("lr_scale", 1.0)


class Checkpoint(SimpleExtension):
    """Save `<name>_model.pkl` (config, parameters, optimizer, RNG, loop state, log and the
    `run` settings), `<name>_log.pkl` and `<name>_log.csv`, atomically, before training, after
    every epoch and when training stops.

    The model file is an epoch's commit point: written first, with a copy of the log, so a kill
    leaves the log and the pictures behind it, never ahead; a resumed run rewrites the log.
    With `keep_every` N, the model file of every Nth epoch also stays, as
    `epochs/<name>_epoch-NNN_model.pkl` (rundir.kept_path): a hard link to it, which keeps its
    bytes when the next save replaces `<name>_model.pkl` (a copy where the disk has no links).
    """

    default_triggers = ("before_training", "before_first_epoch", "after_epoch", "after_training")

    def __init__(self, run_dir, name: str, run: dict, started_from: dict | None = None,
                 keep_every: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.started_from = started_from      # the --oldmodel's training, where there is one
        self.keep_every = keep_every
        self.kept = partial(kept_path, Path(run_dir), name)       # epoch -> its kept file
        self.model_path = Path(run_dir) / f"{name}_model.pkl"
        self.log_path = Path(run_dir) / f"{name}_log.pkl"
        self.csv_path = Path(run_dir) / f"{name}_log.csv"
        self.run = run
        self.saved_at = None

    def do(self, which_callback: str, *args) -> None:
        loop = self.main_loop
        position = (loop.status["epoch"], loop.status["iteration"])
        if which_callback == "after_training" and position == self.saved_at:
            return      # a normal end: the last epoch's files are already these
        if which_callback == "before_training":
            if not loop.fresh:
                self._save_log(loop.log)            # resumed: the log the model file holds
                # killed between an epoch's save and its keep: the model file is still that
                # epoch's, and the resumed run will not end that epoch again
                if loop.status["batch"] == 0 and not self.kept(loop.status["epoch"]).exists():
                    self._keep_if_due(loop.status["epoch"])
            return
        history = {"started_from": self.started_from} if self.started_from else {}
        save_checkpoint(self.model_path, loop.model, loop.optimizer,
                        rng=rng_state(loop.generator), run=self.run, **history,
                        **loop.state_dict())
        self._save_log(loop.log)
        self.saved_at = position
        if which_callback == "after_epoch":
            self._keep_if_due(loop.status["epoch"])

    def _keep_if_due(self, epoch: int) -> None:
        """Keep the model file, as it is now, as that of `epoch` where --keep-every asks: linked
        (or copied) under a temporary name and renamed, so that it too is whole or absent."""
        if not self.keep_every or epoch == 0 or epoch % self.keep_every:
            return
        kept = self.kept(epoch)
        kept.parent.mkdir(exist_ok=True)
        with atomic_path(kept) as tmp:
            tmp.unlink()
            try:
                os.link(self.model_path, tmp)
            except OSError:
                shutil.copyfile(self.model_path, tmp)

    def _save_log(self, rows: list[dict]) -> None:
        save_log(self.log_path, rows)
        save_log_csv(self.csv_path, rows)


class SampleCheckpoint(SimpleExtension):
    """Draw the same n samples (fixed prior noise) before training and after every epoch:
    `sample.png`, `epoch-NNN.png` (NNN = epochs done), `training.gif` (the epoch grids) and
    `sequence.gif` (the latest drawn step by step, any write window boxed).

    After Checkpoint, so no picture shows an epoch the model file lacks; a resumed run draws
    its epoch's if a kill came before them, and removes any of later epochs.
    """

    STEP_MS, HOLD_MS = 100, 1000      # sequence.gif: each step, the finished drawing
    default_triggers = ("before_training", "before_first_epoch", "after_epoch")

    def __init__(self, run_dir, shape: tuple[int, int, int], n: int = 100, seed: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        self.run_dir, self.shape, self.n, self.seed = Path(run_dir), tuple(shape), n, seed
        self.rows = math.isqrt(n)
        self.cols = math.ceil(n / self.rows)

    @staticmethod
    def scale(shape: tuple[int, int, int]) -> int:
        """How much sequence.gif enlarges small images: room for the boxes between pixels."""
        return 2 if max(shape[1:]) <= 32 else 1

    @classmethod
    def needs(cls, cfg, n: int) -> int:
        """The bytes of drawing n samples and their pictures (sample.py's estimate);
        PictureSizeError where sequence.gif could not hold the steps."""
        check_gif_duration(cfg.n_iter, cls.STEP_MS, cls.HOLD_MS,
                           f"sequence.gif of {cfg.n_iter:,} steps (--niter)")
        return sampling_bytes(cfg, n, cls.scale((cfg.channels, cfg.height, cfg.width)))

    def do(self, which_callback: str, *args) -> None:
        epoch = self.main_loop.status["epoch"]
        if which_callback == "before_training":
            if self.main_loop.fresh:
                return                  # before_first_epoch draws them
            for path in self.run_dir.glob("epoch-[0-9][0-9][0-9]*.png"):
                if path.stem[len("epoch-"):].isdigit() and int(path.stem[6:]) > epoch:
                    path.unlink()
            if (self.run_dir / f"epoch-{epoch:03d}.png").exists():
                return
        try:
            self._draw(epoch)
        except OSError as e:
            # a full disk, say: one line naming the file, not draw/atomic.py's temporary one
            name = Path(e.filename or "samples").name
            if name.startswith(".") and name.endswith(".tmp"):
                name = name[1:].rsplit(".", 2)[0]               # .NAME.XXXXXXXX.tmp -> NAME
            raise DrawError(f"cannot write {self.run_dir / name}: {e.strerror or e}") from e

    def _draw(self, epoch: int) -> None:
        model = self.main_loop.model
        cfg = model.config
        u = prior_noise(model, self.n, self.seed)       # the same noise at every epoch
        with_attention = cfg.write_N is not None
        out = model.sample(self.n, u=u, return_attention=with_attention)
        canvases, attention = out if with_attention else (out, None)          # (T, n, x_dim)
        canvases = canvases.float().cpu()
        grid = image_grid(canvases[-1].view(self.n, *self.shape), self.rows, self.cols)
        save_png(grid, self.run_dir / f"epoch-{epoch:03d}.png")
        save_png(grid, self.run_dir / "sample.png")
        # the GIF is rebuilt from the PNGs on disk, so it survives a resume unchanged
        frames = []
        for path in sorted(self.run_dir.glob("epoch-[0-9][0-9][0-9]*.png")):
            with Image.open(path) as image:
                frames.append(image.convert(grid.mode))
        save_gif(frames, self.run_dir / "training.gif", duration_ms=200)
        scale = self.scale(self.shape)
        steps = sampling_frames(canvases, self.shape, self.rows, self.cols, attention=attention,
                                N=cfg.write_N, scale=scale)
        save_gif(steps, self.run_dir / "sequence.gif", self.STEP_MS, self.HOLD_MS)


class ProgressBar(SimpleExtension):
    """A tqdm bar over each epoch's batches with the latest loss, only where stderr is a
    terminal: in a file or a pipe its frames would bury Printing's lines. There, a plain line
    every tenth of the epoch instead, so that a run under nohup still shows where it is: the
    last batch's loss, and the mean of the epoch's batches so far (of its rest, on a resume),
    since one batch's varies by several nats."""

    PLAIN_LINES = 10      # per epoch, where there is no bar

    default_triggers = ("before_epoch", "after_batch", "after_epoch", "after_training",
                        "on_error")

    def __init__(self, batches_per_epoch: int, **kwargs):
        super().__init__(**kwargs)
        self.total = batches_per_epoch
        self.plain_every = max(1, batches_per_epoch // self.PLAIN_LINES)
        self.bar = None
        self.plain_since = None    # when the epoch (or its rest) began, where there is no bar
        self.plain_losses = []     # its batches' losses since then: one batch's is noisy

    def do(self, which_callback: str, *args) -> None:
        status = self.main_loop.status
        if which_callback == "before_epoch":
            bar = tqdm(total=self.total, initial=status["batch"], leave=False, disable=None,
                       desc=f"epoch {status['epoch'] + 1}", unit="batch", dynamic_ncols=True)
            self.bar = None if bar.disable else bar
            self.plain_since = time.perf_counter() if bar.disable else None
            self.plain_losses = []
        elif which_callback == "after_batch" and self.plain_since is not None:
            self.plain_losses.append(self.main_loop.last_batch["loss"].item())  # synced: free
            if status["batch"] % self.plain_every == 0 and status["batch"] < self.total:
                seconds = time.perf_counter() - self.plain_since
                mean = sum(self.plain_losses) / len(self.plain_losses)
                print(f"  epoch {status['epoch'] + 1}: batch {status['batch']}/{self.total} | "
                      f"loss {self.plain_losses[-1]:.2f}, mean {mean:.2f} | {seconds:.0f} s",
                      flush=True)
        elif which_callback == "after_batch" and self.bar is not None:
            self.bar.update(1)
            if self.bar.n % 10 == 0:
                # the loop already synced the loss for its finiteness check: .item() is free
                loss = self.main_loop.last_batch["loss"].item()
                self.bar.set_postfix(loss=f"{loss:.2f}", refresh=False)
        elif which_callback != "after_batch":
            self.plain_since = None
            if self.bar is not None:
                self.bar.close()
                self.bar = None


class Printing(SimpleExtension):
    """One line per epoch (and one before training) with the numbers of the log's last row."""

    COLUMNS = (("train_nll_bound", "train {:.2f}"), ("valid_nll_bound", "valid {:.2f}"),
               ("test_nll_bound", "test {:.2f}"), ("train_total_gradient_norm", "|grad| {:.3g}"),
               ("train_total_step_norm", "|step| {:.3g}"), ("learning_rate", "lr {:.3g}"),
               ("time_train_this_epoch", "{:.1f} s"))

    default_triggers = ("before_first_epoch", "after_epoch")

    def do(self, which_callback: str, *args) -> None:
        row = self.main_loop.log[-1]
        parts = [f"epoch {row['epoch']:>3}", f"iter {row['iteration']:>7}"]
        parts += [fmt.format(row[key]) for key, fmt in self.COLUMNS if key in row]
        tqdm.write(" | ".join(parts))


class Plot(SimpleExtension):
    """Live plots of the log and the latest samples in a browser (draw.outputs.live, Bokeh);
    if its server cannot start, training goes on without it."""

    default_triggers = ("before_training", "after_epoch", "after_training", "on_error")

    def __init__(self, run_dir, host: str = "127.0.0.1", port: int = 5006, **kwargs):
        super().__init__(**kwargs)
        self.samples_path = Path(run_dir) / "sample.png"
        self.host, self.port = host, port
        self.live = None

    def do(self, which_callback: str, *args) -> None:
        if which_callback == "before_training":
            # imported here: Bokeh's import is slow, and only live plotting needs it
            from draw.outputs.live import LivePlot
            self.live = LivePlot(host=self.host, port=self.port)
            if self.live.start() is None:
                self.live = None      # LivePlot said why; training goes on without plots
        if self.live is None:
            return
        if which_callback in ("before_training", "after_epoch"):
            samples = None
            if self.samples_path.exists():
                with Image.open(self.samples_path) as image:
                    samples = image.copy()
            self.live.update(self.main_loop.log, samples=samples)
        else:
            self.live.close()
            self.live = None
