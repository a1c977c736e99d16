"""Model and log files: plain dicts of tensors and numbers, written atomically, loaded safely.

A model file `<name>_model.pkl` is `torch.save` of
    {"format": "draw-model", "version": 1, "config": DrawConfig.to_dict(), "model": state_dict,
     "optimizer": state_dict or None, "rng": dict or None, "epoch": int, "iteration": int, ...}
and a log file `<name>_log.pkl` of
    {"format": "draw-log", "version": 1, "rows": [{"epoch": int, "iteration": int, ...}, ...]},
its rows also written as `<name>_log.csv` for other programs.

Neither holds a pickled module, class or function (Equinox's "Why not pickle?"), so both load
with `torch.load(weights_only=True)`: reading a file cannot run code. Anything else (another
program's pickle, a truncated download, a later version) is a one-line CheckpointError. Both
are zip archives whose members carry CRC-32s, checked before loading: damaged bytes inside a
tensor still unpickle, as numbers (NaN, or finite and wrong) that only training would reveal.
"""
import csv
import errno
import io
import os
import pickle
import random
import warnings
import zipfile
import zlib

import numpy as np
import torch

from draw.atomic import atomic_write_bytes
from draw.classifier import MODEL_KIND as CLASSIFIER, AttentionClassifier, ClassifierConfig
from draw.errors import DrawError
from draw.model import DrawConfig, DrawModel

MODEL_FORMAT = "draw-model"
LOG_FORMAT = "draw-log"
VERSION = 1


class CheckpointError(DrawError):
    """A model or log file that cannot be written, read, or used."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _save(path: str | os.PathLike, obj: dict) -> None:
    # serialised in memory first: torch.save writing to a file reports a full disk as
    # "[enforce fail at inline_container.cc] unexpected pos", while a plain write of the bytes
    # raises OSError with its errno ("No space left on device"); the previous file is untouched
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        atomic_write_bytes(path, buffer.getbuffer())
    except OSError as e:
        raise CheckpointError(f"cannot write {os.fspath(path)}: {e.strerror or e}") from e


def _check_crcs(path: str) -> None:
    """CheckpointError if a member of the zip archive at `path` fails its CRC-32. Reading every
    byte once costs about what loading does (tens of ms for the shipped pretrained files). A
    file that is no zip archive (missing, truncated, foreign) is left to torch.load's errors."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile):
        return
    try:
        with archive:
            bad = archive.testzip()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {_first_line(e)}") from e
    # a broken local header or compressed stream: the archive's own structure is damaged
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CheckpointError(f"{path} is damaged: {_first_line(e)}") from e
    if bad is not None:
        raise CheckpointError(f"{path} is damaged: its member {bad} fails its CRC-32 check")


def _load(path: str | os.PathLike, fmt: str, map_location) -> dict:
    path = os.fspath(path)
    _check_crcs(path)
    try:
        with warnings.catch_warnings():
            # a foreign pickle makes torch warn about its protocol before it fails: the
            # one-line CheckpointError below says all there is to say
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        if e.errno != errno.EINVAL:      # torch's zip reader says EINVAL for a truncated file
            raise CheckpointError(f"cannot read {path}: {_first_line(e)}") from e
        raise CheckpointError(f"{path} is not a readable {fmt} file (damaged, or another "
                              f"program's file)") from e
    except pickle.UnpicklingError as e:
        # torch's message, not passed on, advises weights_only=False: the one thing not to do.
        # "Unsupported global: GLOBAL m.f" (or "unsupported GLOBAL ... is blocked"): a pickled
        # object other than tensors and plain data, which could run code
        if "unsupported global" in str(e).lower():
            raise CheckpointError(f"{path} is refused as unsafe: it holds pickled Python "
                                  f"objects that could run code when loaded; it was not "
                                  f"written by this program") from None
        raise CheckpointError(f"{path} is not a readable {fmt} file (damaged, or another "
                              f"program's pickle)") from None
    # foreign or damaged bytes raise a zoo of types (UnpicklingError, RuntimeError from the zip
    # reader, EOFError, a bare KeyError such as "101" for a text file, ...): all of them mean
    # the same thing to the user, and their texts say nothing to them
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable {fmt} file (damaged, or another "
                              f"program's file)") from e
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a {fmt} file (found {found!r})")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path} is {fmt} version {obj.get('version')!r}; "
                              f"this program reads version {VERSION}")
    return obj


def save_checkpoint(path: str | os.PathLike, model: DrawModel,
                    optimizer: torch.optim.Optimizer | None = None, **extra) -> None:
    """Write a model file atomically: the `model`'s config (it must have one, as models from
    `from_config` do) and parameters, the `optimizer`'s state, and `extra` entries of plain data
    ("epoch", "iteration", both 0 by default, "rng" from `rng_state`, ...)."""
    if model.config is None:
        raise ValueError("save_checkpoint needs a model built by DrawModel.from_config")
    state = {"format": MODEL_FORMAT, "version": VERSION, "config": model.config.to_dict(),
             "model": model.state_dict(),
             "optimizer": None if optimizer is None else optimizer.state_dict(),
             "rng": None, "epoch": 0, "iteration": 0}
    state.update(extra)
    _save(path, state)


def save_model_dict(path: str | os.PathLike, state: dict) -> None:
    """Write a model file's dict (`load_checkpoint`'s, trimmed by export.py), atomically."""
    _save(path, state)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a model file written by `save_checkpoint`; CheckpointError if it is not one."""
    ckpt = _load(path, MODEL_FORMAT, map_location)
    for key, kind in (("config", dict), ("model", dict), ("epoch", int), ("iteration", int)):
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"{os.fspath(path)} is damaged: its {key!r} entry is "
                                  f"{type(ckpt.get(key)).__name__}, expected {kind.__name__}")
    return ckpt


def training_history(ckpt: dict, path: str | os.PathLike) -> dict:
    """What a model file's parameters were trained for, over its run and the runs it started
    from (--oldmodel), as a run that starts from it records it ("started_from"): the file (an
    absolute path), epochs, steps and seconds of training steps (the logs' time_train_this_epoch,
    and a run's model file saved mid-epoch adds that epoch's so far; an export has no record
    of a part epoch's time)."""
    before = ckpt.get("started_from") or {}
    seconds = sum(row.get("time_train_this_epoch", 0.0) for row in ckpt.get("log") or ())
    seconds += ((ckpt.get("extensions") or {}).get("Timing") or {}).get("epoch_elapsed", 0.0)
    return {"file": os.path.abspath(path), "epochs": ckpt["epoch"] + before.get("epochs", 0),
            "iterations": ckpt["iteration"] + before.get("iterations", 0),
            "train_seconds": seconds + before.get("train_seconds", 0.0)}


def describe_history(history: dict) -> str:
    """A run's "started_from" in words, for its header and export-model.py."""
    return (f"{history['file']}, trained {history['epochs']} epochs ({history['iterations']:,} "
            f"steps, {history['train_seconds'] / 3600:.1f} h) before")


class ClassifierFileError(CheckpointError):
    """A classifier's model file (train-classifier.py) where a DRAW model's was expected."""


def file_config(ckpt: dict, path: str | os.PathLike,
                classifier: bool = False) -> DrawConfig | ClassifierConfig:
    """The config of a loaded model file, read before its model is built so that its sizes can
    be checked first (draw/memory.py); a classifier's only where `classifier` allows one, else
    ClassifierFileError. Its "model" entry says which kind; from_dict checks the rest."""
    config = ckpt["config"]
    kind = ClassifierConfig if config.get("model") == CLASSIFIER else DrawConfig
    if kind is ClassifierConfig and not classifier:
        raise ClassifierFileError(f"{os.fspath(path)} is a classifier (train-classifier.py), not "
                                  f"a DRAW model; evaluate.py prints its test error")
    try:
        return kind.from_dict(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{os.fspath(path)} has an invalid config: {_first_line(e)}") from e


def draw_config(ckpt: dict, path: str | os.PathLike) -> DrawConfig:
    """The DrawConfig of a loaded model file; CheckpointError, one line, where it has none."""
    return file_config(ckpt, path)


def classifier_config(ckpt: dict, path: str | os.PathLike) -> ClassifierConfig:
    """The ClassifierConfig of a loaded classifier's model file; CheckpointError, one line, for
    any other file, a DRAW model's included."""
    cfg = file_config(ckpt, path, classifier=True)
    if not isinstance(cfg, ClassifierConfig):
        raise CheckpointError(f"{os.fspath(path)} is a DRAW model file, not a classifier's "
                              f"(train-classifier.py writes those)")
    return cfg


def _filled(model, ckpt: dict, path, map_location):
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{os.fspath(path)}: parameters do not fit its config "
                              f"({_first_line(e)})") from e
    return model.to(map_location)


def build_model(ckpt: dict, path: str | os.PathLike, map_location="cpu") -> DrawModel:
    """The DRAW model of a loaded model file (`path` names it in errors), on `map_location`,
    in training mode: its config alone defines the architecture."""
    return _filled(DrawModel.from_config(draw_config(ckpt, path)), ckpt, path, map_location)


def build_classifier(ckpt: dict, path: str | os.PathLike,
                     map_location="cpu") -> AttentionClassifier:
    """The classifier of a loaded model file (train-classifier.py's), as `build_model`."""
    return _filled(AttentionClassifier.from_config(classifier_config(ckpt, path)), ckpt, path,
                   map_location)


def load_model(path: str | os.PathLike, map_location="cpu") -> tuple[DrawModel, dict]:
    """Rebuild a DRAW model from its model file: the model (`build_model`) and the file's dict."""
    ckpt = load_checkpoint(path, map_location)
    return build_model(ckpt, path, map_location), ckpt


def load_classifier(path: str | os.PathLike,
                    map_location="cpu") -> tuple[AttentionClassifier, dict]:
    """Rebuild a classifier from its model file, as `load_model`; CheckpointError, one line,
    for anything else, a DRAW model file included."""
    ckpt = load_checkpoint(path, map_location)
    return build_classifier(ckpt, path, map_location), ckpt


DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """The device a `--device` flag names: auto (CUDA when available, else the CPU), cpu, cuda
    or cuda:N; DrawError, one line, for anything else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise DrawError(f"--device {name!r} is not a device name (cpu, cuda, cuda:N, auto)") from e
    # torch names devices this project never runs on (meta, mps, xla, ...): they fail later,
    # in a traceback from deep inside a model or the data pipeline
    if device.type not in DEVICE_TYPES:
        raise DrawError(f"--device {name} is not supported (auto, cpu, cuda, cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DrawError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DrawError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def save_log(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write the training log (one dict of plain numbers per row) atomically."""
    _save(path, {"format": LOG_FORMAT, "version": VERSION, "rows": list(rows)})


def save_log_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write the training log as CSV, atomically: a column per key, in the order the rows first
    hold them, empty where a row lacks it; floats in full, so they read back exactly."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    try:
        atomic_write_bytes(path, text.getvalue().encode("utf-8"))
    except OSError as e:
        raise CheckpointError(f"cannot write {os.fspath(path)}: {e.strerror or e}") from e


def load_log(path: str | os.PathLike) -> list[dict]:
    """Read a log file written by `save_log`: the list of rows, oldest first."""
    rows = _load(path, LOG_FORMAT, "cpu").get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CheckpointError(f"{os.fspath(path)} is damaged: 'rows' is not a list of dicts")
    return rows


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every random state a run consumes, as plain data: torch (CPU and CUDA), NumPy, Python's
    `random` and the data-order `generator`, for a resumed run to draw the same numbers."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # a NumPy array would need an unsafe unpickler; its uint32 keys fit an int64 tensor
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "generator": None if generator is None else generator.get_state(),
    }


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Restore what `rng_state` captured; the CUDA states only where the same GPUs exist."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state["cuda"]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if generator is not None and state["generator"] is not None:
        generator.set_state(state["generator"].cpu())
