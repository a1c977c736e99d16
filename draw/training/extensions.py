"""Extensions of the main loop, with the classic Blocks names; they talk through the log.

Every extension is a SimpleExtension: it has one no-op-by-default method per event of the loop
(draw/training/main_loop.py), and trigger keyword arguments decide which events reach its `do`:

    before_training=True     at the start of every run (fresh or resumed)
    before_first_epoch=True  at the start of a fresh run only, after before_training
    before_epoch=True, after_batch=True, after_epoch=True, after_training=True, on_error=True
    every_n_batches=N, every_n_epochs=N

Subclasses set their defaults with `kwargs.setdefault(...)`, as Blocks' do, so a caller can
still change them. An extension that must survive a resume mid-epoch keeps its state in
`state_dict` / `load_state_dict` (plain data); the Checkpoint extension saves it.
"""
import math
import time
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from draw.training.checkpoint import rng_state, save_checkpoint, save_log
from draw.outputs.plotting import image_grid, sampling_frames, save_gif, save_png
from draw.outputs.sampling import prior_noise

EVENTS = ("before_training", "before_epoch", "after_batch", "after_epoch", "after_training",
          "on_error")
TRIGGERS = EVENTS + ("before_first_epoch",)


class SimpleExtension:
    """Base class: trigger kwargs funnelled into one `do(which_callback, *args)`.

    Parameters
    ----------
    name : str, optional
        Key of this extension's state in a checkpoint; the class name by default.
    every_n_batches, every_n_epochs : int, optional
        Also call `do("after_batch")` / `do("after_epoch")` when the iteration / epoch count is a
        multiple of N.
    **triggers : bool
        Any of before_training, before_first_epoch, before_epoch, after_batch, after_epoch,
        after_training, on_error.
    """

    def __init__(self, name: str | None = None, every_n_batches: int | None = None,
                 every_n_epochs: int | None = None, **triggers: bool):
        unknown = set(triggers) - set(TRIGGERS)
        if unknown:
            raise TypeError(f"unknown triggers {sorted(unknown)}; known: {list(TRIGGERS)}")
        self.name = name or type(self).__name__
        self.every_n_batches = every_n_batches
        self.every_n_epochs = every_n_epochs
        self.triggers = {event for event, on in triggers.items() if on}
        self.main_loop = None

    def do(self, which_callback: str, *args) -> None:
        """Act on an event; `which_callback` names it."""
        raise NotImplementedError

    def before_training(self) -> None:
        if "before_training" in self.triggers:
            self.do("before_training")
        if "before_first_epoch" in self.triggers and self.main_loop.fresh:
            self.do("before_first_epoch")

    def before_epoch(self) -> None:
        if "before_epoch" in self.triggers:
            self.do("before_epoch")

    def after_batch(self) -> None:
        n = self.every_n_batches
        if "after_batch" in self.triggers or (n and self.main_loop.status["iteration"] % n == 0):
            self.do("after_batch")

    def after_epoch(self) -> None:
        n = self.every_n_epochs
        if "after_epoch" in self.triggers or (n and self.main_loop.status["epoch"] % n == 0):
            self.do("after_epoch")

    def after_training(self) -> None:
        if "after_training" in self.triggers:
            self.do("after_training")

    def on_error(self, exception: BaseException) -> None:
        if "on_error" in self.triggers:
            self.do("on_error", exception)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Timing(SimpleExtension):
    """Record `time_train_this_epoch` (seconds of training steps) and `time_total` (wall-clock
    seconds since the run first started, resumes added up). Put it first, so that the epoch's
    time excludes the other extensions' evaluation and saving."""

    def __init__(self, **kwargs):
        for trigger in ("before_training", "before_epoch", "after_epoch"):
            kwargs.setdefault(trigger, True)
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

    def __init__(self, after_n_epochs: int | None = None, after_n_batches: int | None = None,
                 **kwargs):
        kwargs.setdefault("before_training", True)
        kwargs.setdefault("after_epoch", True)
        super().__init__(every_n_batches=after_n_batches, **kwargs)
        self.after_n_epochs = after_n_epochs

    def do(self, which_callback: str, *args) -> None:
        status = self.main_loop.status
        done = which_callback == "after_batch" or (
            self.after_n_epochs is not None and status["epoch"] >= self.after_n_epochs)
        if done:
            status["finish_requested"] = True
            self.main_loop.log[-1]["training_finish_requested"] = True


def log_entries(prefix: str, means: dict) -> dict:
    """A task's numbers as log keys: {"nll_bound": b, "kl_term": [k0, k1]} with prefix "valid"
    gives valid_nll_bound, valid_kl_term_0, valid_kl_term_1 (the classic names)."""
    row = {}
    for name, value in means.items():
        if isinstance(value, (list, tuple)):
            row.update({f"{prefix}_{name}_{t}": float(v) for t, v in enumerate(value)})
        else:
            row[f"{prefix}_{name}"] = float(value)
    return row


class TrainingDataMonitoring(SimpleExtension):
    """Average the task's monitored numbers over each epoch, into `train_<name>` (for DRAW
    `train_nll_bound` and `train_kl_term_<t>`), with `train_total_gradient_norm` and
    `train_total_step_norm`.

    The task's numbers are means over the epoch's examples, the norms means over its batches.
    Sums stay on the device until the epoch ends, so monitoring adds no host sync per batch.
    The loop's per-batch sums are already global under torchrun, so every rank (and a
    checkpoint taken mid-epoch) holds the numbers of the whole job.
    """
    # what checkpoints written before the task existed called the sums (a mid-epoch resume)
    OLD_NAMES = {"nll_bound_sum": "nll_bound", "kl_sum": "kl_term"}

    def __init__(self, **kwargs):
        kwargs.setdefault("after_batch", True)
        kwargs.setdefault("after_epoch", True)
        super().__init__(**kwargs)
        self.sums: dict[str, torch.Tensor] = {}    # float64, on the model's device
        self.batches = 0

    def do(self, which_callback: str, *args) -> None:
        if which_callback == "after_batch":
            last = self.main_loop.last_batch
            numbers = {**last["sums"], "total_gradient_norm": last["total_gradient_norm"],
                       "total_step_norm": last["total_step_norm"]}
            for key, value in numbers.items():
                value = value.detach().double()
                self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.batches += 1
        elif which_callback == "after_epoch" and self.batches:
            sums = dict(self.sums)
            norms = {key: sums.pop(key).item() / self.batches
                     for key in ("total_gradient_norm", "total_step_norm")}
            examples = sums.pop("examples").item()
            means = {key: (value / examples).tolist() for key, value in sums.items()}
            self.main_loop.log[-1].update(log_entries("train", {**means, **norms}))
            self.sums, self.batches = {}, 0

    def state_dict(self) -> dict:
        return {"sums": {key: value.cpu() for key, value in self.sums.items()},
                "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        device = next(self.main_loop.model.parameters()).device
        sums = {self.OLD_NAMES.get(key, key): value.to(device)
                for key, value in state.get("sums", {}).items()}
        if "images" in state and sums:     # the old format kept the count apart
            sums["examples"] = torch.tensor(float(state["images"]), dtype=torch.float64,
                                            device=device)
        self.sums, self.batches = sums, state.get("batches", 0)


class DataStreamMonitoring(SimpleExtension):
    """Evaluate the task on a whole split under no_grad: `<prefix>_<name>` for each of the
    task's numbers (for DRAW `<prefix>_nll_bound` and `<prefix>_kl_term_<t>`), means over the
    split's examples.

    Under torchrun every rank evaluates its slice of each batch and the sums are all-reduced:
    the numbers are those of one process, in 1 / world_size of the time.

    Parameters
    ----------
    stream : callable
        Returns one pass over the split in batches on `device` (draw.datasets.batches).
    prefix : str
        "valid" or "test".
    device : str or torch.device
    seed : int
        Any noise comes from a generator seeded with it at every evaluation: each epoch sees
        the same noise (so differences between epochs are the model's, not the noise's), and
        evaluating draws nothing from the training's random streams.
    """

    def __init__(self, stream, prefix: str, device, seed: int = 0, **kwargs):
        kwargs.setdefault("before_first_epoch", True)
        kwargs.setdefault("after_epoch", True)
        kwargs.setdefault("name", f"{prefix}_monitoring")
        super().__init__(**kwargs)
        self.stream, self.prefix = stream, prefix
        self.device, self.seed = torch.device(device), seed

    def do(self, which_callback: str, *args) -> None:
        loop = self.main_loop
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        means = loop.task.evaluate(self.stream(), generator)
        loop.log[-1].update(log_entries(self.prefix, means))


class Checkpoint(SimpleExtension):
    """Save `<name>_model.pkl` (config, parameters, optimizer, RNG, loop state and log) and
    `<name>_log.pkl`, atomically, before training, after every epoch and when training stops.

    The model file carries a copy of the log, so the pair it resumes from is always consistent,
    whichever of the two files a kill interrupted. `run` is plain data about the run (dataset,
    batch size, ...) that `--resume` and `evaluate.py` read back.
    """

    def __init__(self, run_dir, name: str, run: dict, **kwargs):
        kwargs.setdefault("before_first_epoch", True)
        kwargs.setdefault("after_epoch", True)
        kwargs.setdefault("after_training", True)
        super().__init__(**kwargs)
        self.model_path = Path(run_dir) / f"{name}_model.pkl"
        self.log_path = Path(run_dir) / f"{name}_log.pkl"
        self.run = run
        self.saved_at = None

    def do(self, which_callback: str, *args) -> None:
        loop = self.main_loop
        position = (loop.status["epoch"], loop.status["iteration"])
        if which_callback == "after_training" and position == self.saved_at:
            return      # a normal end: the last epoch's files are already these
        save_log(self.log_path, loop.log)
        save_checkpoint(self.model_path, loop.model, loop.optimizer,
                        rng=rng_state(loop.generator), run=self.run, **loop.state_dict())
        self.saved_at = position


class SampleCheckpoint(SimpleExtension):
    """Draw the same n samples (fixed prior noise) before training and after every epoch.

    Writes `sample.png` (the latest grid), `epoch-NNN.png` (one per epoch, NNN = epochs done),
    `training.gif` (the epoch grids in order) and `sequence.gif` (the latest samples being drawn
    step by step, with the write window boxed when the model has write attention).
    """

    def __init__(self, run_dir, shape: tuple[int, int, int], n: int = 100, seed: int = 0,
                 **kwargs):
        kwargs.setdefault("before_first_epoch", True)
        kwargs.setdefault("after_epoch", True)
        super().__init__(**kwargs)
        self.run_dir, self.shape, self.n, self.seed = Path(run_dir), tuple(shape), n, seed
        self.rows = math.isqrt(n)
        self.cols = math.ceil(n / self.rows)

    def do(self, which_callback: str, *args) -> None:
        model = self.main_loop.model
        cfg = model.config
        u = prior_noise(model, self.n, self.seed)       # the same noise at every epoch
        with_attention = cfg.write_N is not None
        out = model.sample(self.n, u=u, return_attention=with_attention)
        canvases, attention = out if with_attention else (out, None)          # (T, n, x_dim)
        canvases = canvases.float().cpu()
        grid = image_grid(canvases[-1].view(self.n, *self.shape), self.rows, self.cols)
        epoch = self.main_loop.status["epoch"]
        save_png(grid, self.run_dir / f"epoch-{epoch:03d}.png")
        save_png(grid, self.run_dir / "sample.png")
        # the GIF is rebuilt from the PNGs on disk, so it survives a resume unchanged
        frames = []
        for path in sorted(self.run_dir.glob("epoch-[0-9][0-9][0-9]*.png")):
            with Image.open(path) as image:
                frames.append(image.convert(grid.mode))
        save_gif(frames, self.run_dir / "training.gif", duration_ms=200)
        scale = 2 if max(self.shape[1:]) <= 32 else 1     # room for the boxes between pixels
        steps = sampling_frames(canvases, self.shape, self.rows, self.cols, attention=attention,
                                N=cfg.write_N, scale=scale)
        save_gif(steps, self.run_dir / "sequence.gif")


class ProgressBar(SimpleExtension):
    """A tqdm bar over each epoch's batches, with the latest batch's loss (for DRAW the bound)."""

    def __init__(self, batches_per_epoch: int, **kwargs):
        for trigger in ("before_epoch", "after_batch", "after_epoch", "after_training",
                        "on_error"):
            kwargs.setdefault(trigger, True)
        super().__init__(**kwargs)
        self.total = batches_per_epoch
        self.bar = None

    def do(self, which_callback: str, *args) -> None:
        status = self.main_loop.status
        if which_callback == "before_epoch":
            self.bar = tqdm(total=self.total, initial=status["batch"], leave=False,
                            desc=f"epoch {status['epoch'] + 1}", unit="batch", dynamic_ncols=True)
        elif which_callback == "after_batch" and self.bar is not None:
            self.bar.update(1)
            if self.bar.n % 10 == 0:
                # the loop already synced the loss for its finiteness check: .item() is free
                loss = self.main_loop.last_batch["loss"].item()
                self.bar.set_postfix(loss=f"{loss:.2f}", refresh=False)
        elif self.bar is not None:
            self.bar.close()
            self.bar = None


class Printing(SimpleExtension):
    """One line per epoch (and one before training) with the numbers of the log's last row."""

    COLUMNS = (("train_nll_bound", "train {:.2f}"), ("valid_nll_bound", "valid {:.2f}"),
               ("test_nll_bound", "test {:.2f}"), ("train_total_gradient_norm", "|grad| {:.3g}"),
               ("train_total_step_norm", "|step| {:.3g}"), ("time_train_this_epoch", "{:.1f} s"))

    def __init__(self, **kwargs):
        kwargs.setdefault("before_first_epoch", True)
        kwargs.setdefault("after_epoch", True)
        super().__init__(**kwargs)

    def do(self, which_callback: str, *args) -> None:
        row = self.main_loop.log[-1]
        parts = [f"epoch {row['epoch']:>3}", f"iter {row['iteration']:>7}"]
        parts += [fmt.format(row[key]) for key, fmt in self.COLUMNS if key in row]
        tqdm.write(" | ".join(parts))


class Plot(SimpleExtension):
    """Live plots of the log in a browser (Bokeh), with the latest samples; never blocks training.

    Wraps `draw.outputs.live.LivePlot`: if its server cannot start, training goes on without it.
    """

    def __init__(self, run_dir, host: str = "127.0.0.1", port: int = 5006, **kwargs):
        for trigger in ("before_training", "after_epoch", "after_training", "on_error"):
            kwargs.setdefault(trigger, True)
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
