"""A run's settings as one typed dataclass: each field's default, flag, help and resume rule.

`RunSettings` holds what every training run has (name, dataset, epochs, batch size, learning
rate, seed, device, directories, resume, ...); `DrawSettings` adds DRAW's model (attention, T,
LSTM and z sizes, --oldmodel). A classifier's settings subclass `RunSettings` the same way and
get the parser, config files, resume rules and checks for free. A field is declared once:

    n_iter: int = setting(10, "number of glimpses T", flag="--niter")

and from that one place come the argparse flag (`parser`), its help text with the default, the
key of a config file, the name in messages ("--niter must be a positive integer"), the type
check and what a resumed run may change (`on_resume`). Building a settings object checks it
(`__post_init__`): a DrawSettings that exists is valid, so everything is checked before any file
is written.

Where settings come from, later sources overriding earlier ones:

    the field defaults < a config file (--config FILE) < the flags given on the command line

and on --resume the run's own stored settings replace the defaults; flags and a config file may
then only repeat them, except those marked CHANGE (e.g. --epochs, the total to reach) and the
SESSION ones that are not stored at all (device, directories, live plotting).

Config files
------------
TOML (`.toml`) or JSON (`.json`): one flat table of settings. A key is a field name or any of its
flag spellings without the leading dashes (`n_iter`, `niter`; `batch_size`, `bs`; `enc_dim`,
`enc-dim`). Values have the field's type: integers, numbers, strings, true/false. Relative paths
are relative to the working directory, as on the command line. For example, the paper's MNIST
run with attention (configs/*.toml):

    # DRAW, binarized MNIST, read 2x2 / write 5x5, T = 64 (Gregor et al. 2015, Table 2)
    dataset = "bmnist"
    attention = "2,5"
    niter = 64
    lr = 3e-4
    epochs = 100

    python train-draw.py --config configs/bmnist-attention.toml --epochs 10   # flags win

An unknown key, a wrong type or a bad value is a one-line error naming the file.
"""
import argparse
import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from draw.cli import ArgumentParser
from draw.datasets import supported_datasets
from draw.errors import DrawError
from draw.speed import set_flush_denormal

KEEP = "keep"        # stored with the run; a resumed run keeps it (a flag may only repeat it)
CHANGE = "change"    # stored with the run; a resumed run may change it (e.g. --epochs)
FRESH = "fresh"      # stored; only for a fresh run (giving it with --resume is an error)
SESSION = "session"  # not stored: where and how this process runs (device, directories)
SEED_MAX = 2 ** 32 - 1      # numpy's seeds are 0 .. 2**32 - 1
NAME = re.compile(r"\w[\w.+-]*")    # a name for a directory and file prefix, never a path


def setting(default, help: str, flag: str | None = None, aliases: tuple[str, ...] = (),
            on_resume: str = KEEP, metavar: str | None = None):
    """A dataclass field of a settings class; `flag` defaults to --field-name."""
    return field(default=default, metadata={"help": help, "flag": flag, "aliases": aliases,
                                            "on_resume": on_resume, "metavar": metavar})


def derived():
    """A field computed from the others by the checks (e.g. read_N from --attention)."""
    return field(default=None, init=False, metadata={"derived": True})


@dataclass(frozen=True)
class RunSettings:
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
    learning_rate: float = setting(1e-3, "Adam learning rate", flag="--lr",
                                   aliases=("--learning-rate",))
    lr_warmup: int = setting(0, "raise the learning rate linearly from lr/N to --lr over the "
                                "first N steps (default: no warm-up)", metavar="N")
    lr_decay: float = setting(1.0, "multiply the learning rate by D after every epoch "
                                   "(default 1: constant)", metavar="D")
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
    flush_denormal: bool = setting(
        True, "flush denormal floats to zero on the CPU (torch.set_flush_denormal), which "
              "keeps tiny gradients from slowing arithmetic down; process-wide",
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
    # measured (doc/development.md): on an idle 2-core CPU two threads train 1.3x faster than
    # one; on a CPU that other jobs share, one thread is several times faster than two
    threads: int | None = setting(None, "CPU threads of PyTorch (default: PyTorch's, one per "
                                        "core); 1 is much faster on a CPU shared with other jobs",
                                  on_resume=SESSION, metavar="N")

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for name in self._fields():
            object.__setattr__(self, name, self._typed(name, getattr(self, name), hints[name]))
        self.check()

    def check(self) -> None:
        """Raise DrawError on a bad value; subclasses extend it (and fill their derived fields)."""
        for name in ("epochs", "batch_size", "subset", "eval_every", "threads"):
            self.require(name, getattr(self, name) is None or getattr(self, name) >= 1,
                         "a positive integer")
        for name in ("learning_rate", "grad_clip"):
            value = getattr(self, name)
            self.require(name, math.isfinite(value) and value > 0, "a positive number")
        self.require("lr_warmup", self.lr_warmup >= 0, "0 (none) or a positive integer")
        self.require("lr_decay", 0 < self.lr_decay <= 1, "a number in (0, 1]")
        self.require("eval_subset", self.eval_subset is None or self.eval_subset >= 0,
                     "0 (whole splits) or a positive integer")
        self.require("seed", 0 <= self.seed <= SEED_MAX, f"an integer from 0 to {SEED_MAX}")
        self.require("plot_port", 0 < self.plot_port < 65536, "a TCP port (1-65535)")
        if self.name is not None and (not NAME.fullmatch(self.name) or set(self.name) == {"."}):
            raise DrawError(f"--name must be a name (letters, digits, . _ + -), not a path: "
                            f"{self.name!r}")
        if self.dataset not in self.datasets:
            raise DrawError(f"unknown --dataset {self.dataset!r}; choose from "
                            f"{', '.join(self.datasets)}")

    def describe_lr(self) -> str:
        """The learning rate and its schedule in words, e.g. `0.003, warm-up 500 steps, x0.95
        per epoch` (draw/training/extensions.py: LearningRateSchedule)."""
        parts = [f"{self.learning_rate:g}"]
        if self.lr_warmup:
            parts.append(f"warm-up {self.lr_warmup} steps")
        if self.lr_decay != 1.0:
            parts.append(f"x{self.lr_decay:g} per epoch")
        return ", ".join(parts)

    def apply_to_process(self) -> None:
        """Make the run's process-wide settings, explicitly, once at its start: PyTorch's CPU
        threads and the flushing of denormal floats (draw/speed.py)."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        set_flush_denormal(self.flush_denormal)

    def require(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            raise DrawError(f"{self.flag(name)} must be {what}, got {getattr(self, name)!r}")

    @classmethod
    def flag(cls, name: str) -> str:
        """How field `name` is spelled on the command line, e.g. batch_size -> --bs."""
        f = cls._fields()[name]
        return f.metadata["flag"] or "--" + f.name.replace("_", "-")

    @classmethod
    def _fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls) if f.init}

    @classmethod
    def _typed(cls, name: str, value, hint):
        """`value` checked against the field's annotation; an integer is a valid float."""
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if value is None and type(None) in allowed:
            return value
        if bool in allowed:
            if isinstance(value, bool):
                return value
        elif int in allowed:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif float in allowed:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif str in allowed and isinstance(value, str):
            return value
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        raise DrawError(f"{cls.flag(name)} must be {kind[allowed[0]]}, got {value!r}")

    def stored(self) -> dict:
        """The settings a run keeps with its checkpoint (all but the SESSION ones)."""
        return {name: getattr(self, name) for name, f in self._fields().items()
                if f.metadata["on_resume"] != SESSION}

    # --- where settings come from ---------------------------------------------------------

    @classmethod
    def given(cls, flags: dict) -> dict:
        """The settings asked for: a config file's (flags["config"]) overridden by the flags.

        `flags` maps field names to values, as `parser()` parses them; None means not given.
        """
        flags = {key: value for key, value in flags.items() if value is not None}
        config = flags.pop("config", None)
        unknown = sorted(set(flags) - set(cls._fields()))
        if unknown:
            raise DrawError(f"unknown settings {unknown}; known: {sorted(cls._fields())}")
        return {**(cls.read_config(config) if config is not None else {}), **flags}

    @classmethod
    def read_config(cls, path: str) -> dict:
        """A TOML or JSON file of settings, as field names and values (the module docstring)."""
        suffix = Path(path).suffix.lower()
        if suffix not in (".toml", ".json"):
            raise DrawError(f"--config {path}: expected a .toml or .json file")
        try:
            text = Path(path).read_text(encoding="utf-8")
            table = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
        except OSError as e:
            raise DrawError(f"--config {path}: {e.strerror or e}") from e
        except (ValueError, UnicodeDecodeError) as e:   # TOMLDecodeError and JSONDecodeError too
            raise DrawError(f"--config {path} is not valid {suffix[1:].upper()}: "
                            f"{str(e).splitlines()[0]}") from e
        if not isinstance(table, dict):
            raise DrawError(f"--config {path}: expected a table of settings, got "
                            f"{type(table).__name__}")
        keys = cls._config_keys()
        out = {}
        for key, value in table.items():
            if key not in keys:
                raise DrawError(f"--config {path}: unknown setting {key!r}; known: "
                                f"{', '.join(sorted(cls._fields()))}")
            if keys[key] in out:
                raise DrawError(f"--config {path}: {key!r} sets {keys[key]} a second time")
            out[keys[key]] = value
        return out

    @classmethod
    def _config_keys(cls) -> dict[str, str]:
        """Every accepted config key (field names, flag spellings without dashes) -> field."""
        keys = {}
        for name, f in cls._fields().items():
            for spelling in (name, cls.flag(name), *f.metadata["aliases"]):
                bare = spelling.lstrip("-")
                keys[bare] = keys[bare.replace("-", "_")] = keys[bare.replace("_", "-")] = name
        return keys

    @classmethod
    def resumed(cls, stored: dict, given: dict, where: str):
        """The settings of a run continued from its checkpoint's `stored` settings.

        Stored settings that a later version added take their defaults (the run ran without
        them); `given` (flags, config file) may only repeat the KEEP ones.
        """
        fields = cls._fields()
        unknown = sorted(set(stored) - set(fields))
        if unknown:
            raise DrawError(f"--resume: {where} has settings this version does not know: "
                            f"{unknown}")
        for name, value in given.items():
            rule = fields[name].metadata["on_resume"]
            if rule == FRESH:
                raise DrawError(f"--resume and {cls.flag(name)} cannot be combined: a resumed "
                                f"run continues from its own state")
            before = stored.get(name, fields[name].default)
            if rule == KEEP and value != before:
                raise DrawError(f"--resume keeps the run's settings: {cls.flag(name)} is "
                                f"{before!r} there, not {value!r} (leave the flag out)")
        return cls(**{**stored, **given})

    # --- the command line ------------------------------------------------------------------

    @classmethod
    def parser(cls, description: str) -> argparse.ArgumentParser:
        """An argparse parser with one flag per field, plus --config.

        Flags not given are absent from the parsed namespace (not set to their defaults), so
        that `given` can tell them from a config file's or a resumed run's values.
        """
        parser = ArgumentParser(description=description, argument_default=argparse.SUPPRESS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--config", metavar="FILE",
                            help="a TOML or JSON file of settings (keys as the flags'); flags "
                                 "given here override it")
        hints = typing.get_type_hints(cls)
        for name, f in cls._fields().items():
            hint = hints[name]
            kind = next(t for t in (typing.get_args(hint) or (hint,)) if t is not type(None))
            text = f.metadata["help"]
            if f.default is not None and "default:" not in text:
                text += f" (default: {f.default})" if kind is not bool else \
                    f" (default: {'on' if f.default else 'off'})"
            text += {KEEP: "; kept by --resume", FRESH: "; not with --resume"}.get(
                f.metadata["on_resume"], "")
            spellings = (cls.flag(name), *f.metadata["aliases"])
            if kind is bool:
                parser.add_argument(*spellings, dest=name, help=text,
                                    action=argparse.BooleanOptionalAction)
            else:
                parser.add_argument(*spellings, dest=name, type=kind, help=text,
                                    metavar=f.metadata["metavar"])
        return parser


def parse_attention(attention: str) -> tuple[int | None, int | None]:
    """`--attention`: "" is no attention, "R,W" an R x R read and a W x W write window."""
    if not attention.strip():
        return None, None
    parts = attention.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise DrawError(f"--attention must be two positive window sizes READ,WRITE such as 2,5 "
                        f"(or empty for none), got {attention!r}")
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class DrawSettings(RunSettings):
    """A DRAW training run (train-draw.py): the run's settings and the model's."""
    attention: str = setting("", "read and write window sizes READ,WRITE, e.g. 2,5; empty for "
                                 "no attention (default: none)", aliases=("-a",))
    n_iter: int = setting(10, "number of glimpses T", flag="--niter")
    enc_dim: int = setting(256, "encoder LSTM state dimension")
    dec_dim: int = setting(256, "decoder LSTM state dimension")
    z_dim: int = setting(100, "latent z dimension")
    oldmodel: str | None = setting(None, "start from the parameters of a *_model.pkl file of "
                                         "the same configuration", on_resume=FRESH,
                                   metavar="FILE")
    compile: bool = setting(False, "compile the glimpse (DrawModel.step) with torch.compile "
                                   "(draw.speed.compile_glimpse): the same maths, minutes of "
                                   "compiling first; measured 1.16x on a CPU at T=8",
                            on_resume=CHANGE)
    read_N: int | None = derived()      # from attention, parsed once
    write_N: int | None = derived()

    def check(self) -> None:
        super().check()
        for name in ("n_iter", "enc_dim", "dec_dim", "z_dim"):
            self.require(name, getattr(self, name) >= 1, "a positive integer")
        read_N, write_N = parse_attention(self.attention)
        object.__setattr__(self, "read_N", read_N)
        object.__setattr__(self, "write_N", write_N)
