"""Classification with DRAW's read attention (section 4.1, Table 1): settings, task, pictures, job.

What train-classifier.py trains through the scaffold of draw/training/run.py:
`ClassifierSettings`, `ClassifyTask` (the cross-entropy as loss; the log's `train_error`,
`valid_error`, `test_error` in percent), `GlimpseCheckpoint` (the paper's Figure 4 every epoch)
and `ClassifierJob`, which puts them together. Its glimpses compile as DRAW's do.
"""
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from draw.checkpoint import build_classifier, classifier_config, load_checkpoint
from draw.classifier import AttentionClassifier, ClassifierConfig, classification_loss, errors
from draw.datasets import get_labelled, labelled_batches, labelled_datasets
from draw.errors import DrawError
from draw.fast_path import compile_choice, compile_glimpses
from draw.memory import check_inference
from draw.model import ConfigError
from draw.outputs.glimpses import N_GLIMPSE_IMAGES, glimpse_grid, glimpses_bytes
from draw.outputs.plotting import save_png
from draw.training.distributed import first_on_each_machine
from draw.training.extensions import Printing, SimpleExtension
from draw.training.job import Data, Job, Parts, lr_tag
from draw.training.main_loop import adam_with_heads
from draw.training.run import train
from draw.training.settings import RunSettings
from draw.training.task import Task
from draw.training.typed_settings import setting


@dataclass(frozen=True)
class ClassifierSettings(RunSettings):
    """A classifier training run (train-classifier.py): the run's settings and the model's."""
    script = "train-classifier.py"
    datasets = tuple(labelled_datasets)
    dataset: str = setting("cluttered-mnist", "labelled dataset to classify")
    attention: int = setting(12, "read window size N: each glimpse is N x N (the paper: 12)",
                             aliases=("-a",))
    n_iter: int = setting(8, "number of glimpses T (the paper: 4 and 8)", flag="--niter")
    enc_dim: int = setting(256, "LSTM state dimension (the paper: 256)")
    # glimpse t's window comes from h_{t-1}, so the gradient also flows back through the
    # window (eqs. 21-24, 27) and exploded at 8 glimpses at one rate (doc/development.md)
    read_lr: float = setting(0.1, "learning rate of the read head (the window, eq. 21) as a "
                                  "multiple of --lr; 1 for one rate everywhere")

    def check(self) -> None:
        super().check()
        self.require("read_lr", math.isfinite(self.read_lr) and 0 < self.read_lr <= 1,
                     "a number in (0, 1]")
        if self.live_plotting:
            raise DrawError("--live-plotting: train-classifier.py has no live plots; its "
                            "numbers are printed every epoch and glimpses.png shows the windows")

    @classmethod
    def resumed(cls, stored: dict, given: dict, where: str):
        """As RunSettings.resumed; a run stored before --read-lr trained at one rate."""
        return super().resumed({"read_lr": 1.0, **stored}, given, where)


def classifier_adam(model: AttentionClassifier, s: ClassifierSettings) -> torch.optim.Adam:
    """Adam with the read head (eq. 21) at --read-lr times the rate of the rest."""
    return adam_with_heads(model, model.reader.parameters(), s.read_lr, s.learning_rate)


class ClassifyTask(Task):
    """The classifier's objective: the mean cross-entropy of the softmax on the final state;
    monitored, the cross-entropy and the error rate in percent."""

    def _sums(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        ce = classification_loss(logits, y)                                  # (b,)
        return ce, {"cross_entropy": ce.detach().sum(),
                    "error": 100 * errors(logits.detach(), y).sum(),
                    "examples": torch.tensor(float(y.shape[0]), device=y.device)}

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """The mean cross-entropy over the global batch (x (B, D), y (B,)), as this rank's
        share of it."""
        x, y = batch
        B = x.shape[0]
        x, y = self.dist.shard(x), self.dist.shard(y)                         # (b, D), (b,)
        ce, sums = self._sums(self.module(x), y)
        return ce.sum() * self.dist.loss_scale(B), sums

    @torch.no_grad()
    def evaluate(self, data: Iterable, generator: torch.Generator | None = None) -> dict:
        """Cross-entropy and error rate (percent) over all (x, y) batches of `data`; the
        classifier draws no noise, so `generator` is unused."""
        was_training = self.model.training
        self.model.eval()
        totals = None
        try:
            for x, y in data:
                x, y = self.dist.shard(x), self.dist.shard(y)
                _, sums = self._sums(self.model(x), y)
                part = torch.stack([sums["cross_entropy"], sums["error"],
                                    sums["examples"]]).double()
                totals = part if totals is None else totals + part
        finally:
            self.model.train(was_training)
        if totals is None:
            raise ValueError("evaluate needs at least one batch")
        ce, error, examples = self.dist.all_reduce_sum(totals).tolist()
        return {"cross_entropy": ce / examples, "error": error / examples}


class GlimpseCheckpoint(SimpleExtension):
    """The paper's Figure 4 before training and after every epoch, `glimpses-NNN.png` (NNN =
    epochs done) and `glimpses.png`: test images, one row each, every read window boxed."""

    default_triggers = ("before_first_epoch", "after_epoch")

    def __init__(self, run_dir, images: torch.Tensor, shape: tuple[int, int, int], **kwargs):
        super().__init__(**kwargs)
        self.run_dir, self.images, self.shape = Path(run_dir), images, tuple(shape)

    def do(self, which_callback: str, *args) -> None:
        model = self.main_loop.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                _, attention = model(self.images, return_attention=True)     # (T, n) each
        finally:
            model.train(was_training)
        picture = glimpse_grid(self.images.view(-1, *self.shape), attention,
                               model.config.read_N)
        epoch = self.main_loop.status["epoch"]
        save_png(picture, self.run_dir / f"glimpses-{epoch:03d}.png")
        save_png(picture, self.run_dir / "glimpses.png")


class ClassifierPrinting(Printing):
    """Printing's one line per epoch, with the classifier's numbers."""
    COLUMNS = (("train_error", "train {:.2f}%"), ("valid_error", "valid {:.2f}%"),
               ("test_error", "test {:.2f}%"), ("train_cross_entropy", "xent {:.4f}"),
               ("train_total_gradient_norm", "|grad| {:.3g}"), ("time_train_this_epoch",
                                                                 "{:.1f} s"))


class ClassifierJob(Job):
    """train-classifier.py's runs: labelled data (cluttered-mnist's training images fresh every
    epoch, a function of (--seed, epoch) alone), ClassifyTask, Adam with the read head at
    --read-lr, and the paper's Figure 4 every epoch."""
    script = "train-classifier.py"
    settings_class = ClassifierSettings
    printing = ClassifierPrinting
    picture = ("glimpses-{epoch:03d}.png", "glimpses")

    def long_name(self, s: ClassifierSettings) -> str:
        """e.g. `cluttered-mnist-classifier-r12-t8-enc256-lr13` (lr13 = 1e-3, the classic tag)."""
        return (f"{s.dataset}-classifier-r{s.attention}-t{s.n_iter}-enc{s.enc_dim}-"
                f"lr{lr_tag(s.learning_rate)}")

    def model_config(self, s: ClassifierSettings,
                     shape: tuple[int, int, int]) -> ClassifierConfig:
        """The classifier of the settings for images of `shape` (C, H, W) in ten classes."""
        C, H, W = shape
        try:
            return ClassifierConfig(channels=C, height=H, width=W, n_iter=s.n_iter,
                                    enc_dim=s.enc_dim, read_N=s.attention, n_classes=10)
        except ConfigError as e:
            raise s.config_error(e, {"read_N": "attention"}) from e

    def read_model_file(self, path) -> dict:
        ckpt = load_checkpoint(path)
        # built to check its parameters: its config, read alone, is checked first
        check_inference(classifier_config(ckpt, path), 1, f"the model of {path}")
        build_classifier(ckpt, path)
        return ckpt

    def load_data(self, s: ClassifierSettings, dist, device) -> Data:
        data = first_on_each_machine(dist, lambda: get_labelled(s.dataset, root=s.data_dir,
                                                                seed=s.seed),
                                     device, what=f"loading {s.dataset}")
        return Data(data.train, data.valid, data.test, labelled_batches).cut(
            s, lambda split, index: split.subset(index))

    def picture_bytes(self, cfg: ClassifierConfig, s: ClassifierSettings) -> int:
        return glimpses_bytes(cfg, f"glimpses.png of {s.n_iter:,} glimpses (--niter), "
                                   f"one column each,")

    def build(self, plan) -> Parts:
        s, cfg = plan.checked.settings, plan.checked.cfg
        model = AttentionClassifier.from_config(cfg).to(plan.device)
        # DRAW's rule (draw_job.py): the fixed compile time against what the steps left save
        compiled, why = compile_choice(s.compile, plan.steps_left * s.n_iter, plan.device)
        if compiled:
            compile_glimpses(model)
        pictures = []
        if plan.dist.is_main:
            first, _ = next(labelled_batches(plan.data.test, N_GLIMPSE_IMAGES,
                                             device=plan.device))
            pictures.append(GlimpseCheckpoint(plan.run_path, first,
                                              (cfg.channels, cfg.height, cfg.width)))
        header = [("glimpses", f"{cfg.n_iter} of {cfg.read_N}x{cfg.read_N}"),
                  ("LSTM dimension", cfg.enc_dim),
                  ("learning rate", f"{s.describe_lr()}; read head x{s.read_lr:g}"),
                  ("compiled glimpses", why)]
        return Parts(ClassifyTask(model, plan.dist), classifier_adam(model, s), pictures, header)


CLASSIFIER = ClassifierJob()


def main(**flags) -> None:
    """Train the classifier; `flags` are train-classifier.py's, by ClassifierSettings field
    name, plus `config`."""
    train(CLASSIFIER, flags)

