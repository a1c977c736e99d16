"""The settings of a training run (draw/training/typed_settings.py: flags, config files, resume).

`RunSettings` holds what every run has; `DrawSettings` adds DRAW's model, as ClassifierSettings
(classify.py) adds the classifier's.
"""
import math
import os
import re
import typing
from dataclasses import dataclass

import torch

from draw.datasets import supported_datasets
from draw.errors import DrawError
from draw.fast_path import AUTO_COMPILE_GLIMPSES, GLIMPSES_PER_CALL, set_flush_denormal
from draw.precision import DEFAULT as DEFAULT_PRECISION
from draw.precision import MATMUL_DEFAULT, MATMUL_PRECISIONS, PRECISIONS
from draw.training.tensorboard import require_tensorboard
from draw.training.typed_settings import CHANGE, FRESH, SESSION, Settings, setting

SEED_MAX = 2 ** 32 - 1      # numpy's seeds are 0 .. 2**32 - 1
NAME = re.compile(r"\w[\w.+-]*")    # a name for a directory and file prefix, never a path
# a file name holds 255 bytes; a model file's temporary `.NAME_model.pkl.XXXXXXXX.tmp` adds 24
MAX_NAME_BYTES = 200


@dataclass(frozen=True)
class RunSettings(Settings):
    """What every training run has; subclasses add their model's settings."""
    # the datasets --dataset may name; a subclass that trains on others sets its own
    datasets: typing.ClassVar[tuple[str, ...]] = tuple(supported_datasets)
    name: str | None = setting(
        None, "name of the run: its directory is NAME-YYYYmmdd-HHMMSS, its files NAME_model.pkl "
              "and NAME_log.pkl (default: the dataset's name)")
    dataset: str = setting("bmnist", "dataset to train on")
    epochs: int = setting(100, "total number of epochs to train", on_resume=CHANGE)
    batch_size: int = setting(100, "size of each mini-batch; under torchrun the global size, "
                                   "split between the processes",
                              flag="--bs", aliases=("--batch-size",))
    # CHANGE: resuming with a lower rate is the classic way to finish a long run
    learning_rate: float = setting(1e-3, "Adam learning rate", flag="--lr",
                                   aliases=("--learning-rate",), on_resume=CHANGE)
    lr_warmup: int = setting(0, "raise the learning rate linearly from lr/N to --lr over the "
                                "first N steps (default: no warm-up)", metavar="N")
    # CHANGE: the rate is lr * D ** epoch, epochs counted from 0, so a resume with
    # --lr-decay 1 holds a decayed run at the rate its --lr names (doc/recipes.md)
    lr_decay: float = setting(1.0, "multiply the learning rate by D after every epoch "
                                   "(default 1: constant)", metavar="D", on_resume=CHANGE)
    seed: int = setting(1, f"seed of initialisation, data order and noise (0 to {SEED_MAX})")
    grad_clip: float = setting(10.0, "clip the gradient to this total norm")
    subset: int | None = setting(None, "train on this many randomly chosen training images, "
                                       "for quick runs; valid and test stay whole (default: all)")
    eval_every: int = setting(1, "evaluate on valid and test every N epochs (and always after "
                                 "the last)", on_resume=CHANGE, metavar="N")
    eval_subset: int | None = setting(
        2000, "evaluate on this many randomly chosen valid and test images (the same ones "
              "every time) before training and after each epoch but the last, which always "
              "uses the whole splits; 0 for the whole splits every time", on_resume=CHANGE,
        metavar="N")
    keep_every: int = setting(0, "also keep the model file of every Nth epoch, as "
                                 "epochs/NAME_epoch-NNN_model.pkl in the run directory (each "
                                 "takes a model file's disk); 0: only the last", metavar="N",
                              on_resume=CHANGE)
    flush_denormal: bool = setting(
        True, "flush denormal floats to zero on the CPU (torch.set_flush_denormal), which "
              "keeps tiny gradients from slowing arithmetic down; process-wide",
        on_resume=CHANGE)
    compile: bool | None = setting(
        None, f"compile the model's glimpses ({GLIMPSES_PER_CALL} per graph) with "
              f"torch.compile: the same maths, faster than eager on a CPU after a minute or two "
              f"of compiling (default: when the run has at least {AUTO_COMPILE_GLIMPSES:,} "
              f"glimpses, steps x T, left to train and a compiler is there)",
        on_resume=SESSION)
    # CHANGE: the model file is float32 either way, so a run may go on in another precision
    precision: str = setting(
        DEFAULT_PRECISION, f"precision of the training step, Lightning's names: "
                           f"{' or '.join(PRECISIONS)} (the forward pass under bfloat16 autocast; "
                           f"weights, Adam and the loss's sums float32; draw/precision.py). "
                           f"Evaluation is float32 either way", on_resume=CHANGE)
    matmul_precision: str = setting(
        MATMUL_DEFAULT, f"torch.set_float32_matmul_precision of the training step: "
                        f"{', '.join(MATMUL_PRECISIONS)} (medium: bfloat16 inputs to the float32 "
                        f"products on a CPU with AMX or AVX512-BF16, float32 sums; high and "
                        f"medium: TF32 on CUDA; draw/precision.py). Evaluation is float32 "
                        f"either way",
        on_resume=CHANGE)
    device: str = setting("auto", "cpu, cuda, cuda:N, or auto: CUDA when available; under "
                                  "torchrun each process takes cuda:LOCAL_RANK",
                          on_resume=SESSION)
    data_dir: str | None = setting(None, "where datasets live (default: $DRAW_DATA_PATH, "
                                         "$FUEL_DATA_PATH, or a cache directory)",
                                   on_resume=SESSION, metavar="DIR")
    run_dir: str = setting(".", "where to create the run directory", on_resume=SESSION,
                           metavar="DIR")
    resume: str | None = setting(None, "continue the run in RUN_DIR from its last save",
                                 on_resume=SESSION, metavar="RUN_DIR")
    live_plotting: bool = setting(False, "show live plots in a browser (Bokeh)",
                                  aliases=("--plot",), on_resume=SESSION)
    plot_port: int = setting(5006, "port of the live-plot server", on_resume=SESSION)
    tensorboard: bool = setting(False, "also write TensorBoard event files into the run "
                                       "directory: the log's numbers and the pictures, every "
                                       "epoch (needs pip install -e \".[tensorboard]\")",
                                on_resume=SESSION)
    # threads that other jobs' processes share a CPU with wait for each other (doc/development.md)
    threads: int | None = setting(None, "CPU threads of PyTorch (default: PyTorch's, one per "
                                        "core); 1 is much faster on a CPU shared with other jobs",
                                  on_resume=SESSION, metavar="N")

    def check(self) -> None:
        super().check()
        for name in ("epochs", "batch_size", "subset", "eval_every", "threads"):
            self.require(name, getattr(self, name) is None or getattr(self, name) >= 1,
                         "a positive integer")
        # more threads than CPUs only wait, and each takes memory (--threads 10000: MemoryError)
        cpus = os.cpu_count()
        self.require("threads", self.threads is None or cpus is None or self.threads <= cpus,
                     f"at most {cpus}, the CPUs of this machine")
        for name in ("learning_rate", "grad_clip"):
            value = getattr(self, name)
            self.require(name, math.isfinite(value) and value > 0, "a positive number")
        self.require("learning_rate", self.learning_rate <= 1,
                     "at most 1 (Adam moves every parameter by about that much a step)")
        self.require("lr_warmup", self.lr_warmup >= 0, "0 (none) or a positive integer")
        self.require("lr_decay", 0 < self.lr_decay <= 1, "a number in (0, 1]")
        self.require("eval_subset", self.eval_subset is None or self.eval_subset >= 0,
                     "0 (whole splits) or a positive integer")
        self.require("keep_every", self.keep_every >= 0, "0 (only the last) or a positive integer")
        self.require("seed", 0 <= self.seed <= SEED_MAX, f"an integer from 0 to {SEED_MAX}")
        self.require("plot_port", 0 < self.plot_port < 65536, "a TCP port (1-65535)")
        self.require("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
        self.require("matmul_precision", self.matmul_precision in MATMUL_PRECISIONS,
                     f"one of {', '.join(MATMUL_PRECISIONS)}")
        if self.tensorboard:
            require_tensorboard()
        if self.name is not None:
            self.require("name", NAME.fullmatch(self.name) and set(self.name) != {"."},
                         "a name (letters, digits, . _ + -), not a path")
            if len(self.name.encode()) > MAX_NAME_BYTES:
                raise DrawError(f"--name must be at most {MAX_NAME_BYTES} bytes long (the run's "
                                f"file names add to it, and a file name holds 255), got "
                                f"{len(self.name.encode())}")
        if self.dataset not in self.datasets:
            raise DrawError(f"unknown --dataset {self.dataset!r}; choose from "
                            f"{', '.join(self.datasets)}")

    def describe_lr(self) -> str:
        """The learning rate and its schedule in words: `0.003, warm-up 500 steps, x0.95 per
        epoch`."""
        parts = [f"{self.learning_rate:g}"]
        if self.lr_warmup:
            parts.append(f"warm-up {self.lr_warmup} steps")
        if self.lr_decay != 1.0:
            parts.append(f"x{self.lr_decay:g} per epoch")
        return ", ".join(parts)

    def apply_to_process(self) -> None:
        """Make the run's process-wide settings once at its start: CPU threads, denormals."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        set_flush_denormal(self.flush_denormal)

def parse_attention(attention: str) -> tuple[int | None, int | None]:
    """`--attention`: "" is no attention, "R,W" an R x R read and a W x W write window."""
    if not attention.strip():
        return None, None
    parts = attention.split(",")
    # whether the sizes fit the model is DrawConfig's to say (DrawJob.model_config)
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise DrawError(f"--attention must be two window sizes READ,WRITE such as 2,5 "
                        f"(or empty for none), got {attention!r}")
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class DrawSettings(RunSettings):
    """A DRAW training run (train-draw.py): the run's settings and the model's."""
    script = "train-draw.py"
    attention: str = setting("", "read and write window sizes READ,WRITE, e.g. 2,5; empty for "
                                 "no attention (default: none)", aliases=("-a",))
    n_iter: int = setting(10, "number of glimpses T", flag="--niter")
    enc_dim: int = setting(256, "encoder LSTM state dimension")
    dec_dim: int = setting(256, "decoder LSTM state dimension")
    z_dim: int = setting(100, "latent z dimension")
    oldmodel: str | None = setting(None, "start from the parameters of a *_model.pkl file of "
                                         "the same configuration (--niter may differ)",
                                   on_resume=FRESH, metavar="FILE")
    # runs and model files from before 2026-12-06 had c_0, h_0^enc, h_0^dec at zero
    learned_initial_state: bool = setting(
        True, "learn c_0, h_0^enc and h_0^dec as biases, as the paper does (section 2.2); "
              "off: zero, as the classic repository and model files before 2026-12-06",
        absent=False)
    learned_prior: bool = setting(
        False, "learn the prior P(Z_t | h_{t-1}^dec) = N(m_t, s_t), m_t and log s_t linear in "
               "the decoder's last state, beyond the paper (default: N(0, I), the paper's)",
        absent=False)
    # one unit of g~ moves a window (A + 1) / 2 pixels (eqs. 22-23): on 60 x 60 canvases the
    # heads' gradients dominate and spike (doc/development.md), as the classifier's read head's
    window_lr: float = setting(1.0, "learning rate of the attention windows (the read and write "
                                    "heads of eq. 21) as a multiple of --lr")

    def check(self) -> None:
        super().check()
        read_N, write_N = parse_attention(self.attention)
        self.require("window_lr", math.isfinite(self.window_lr) and 0 < self.window_lr <= 1,
                     "a number in (0, 1]")
        self.require("window_lr", self.window_lr == 1 or (read_N, write_N) != (None, None),
                     "1 without --attention (there is no window)")

    @property
    def read_N(self) -> int | None:
        """The read window's size from --attention; None: no attention."""
        return parse_attention(self.attention)[0]

    @property
    def write_N(self) -> int | None:
        return parse_attention(self.attention)[1]
