"""A trained model to share: its parameters and where they came from, not how to resume them.

    python export-model.py RUN_DIR pretrained/bmnist-r2-w5-t64_model.pkl

writes the model-file format (draw/checkpoint.py) with the config, parameters, settings, epoch,
iteration and log, but without Adam's moments and the random states ("optimizer" and "rng"
empty). Every reader of model files reads it; `--resume` refuses it in one line.

With `half=True` (`--half`) the floating-point parameters are stored as float16, half the
size, and load as float32 (load_state_dict casts them): each within 2**-11 of its value
(relative), or 2**-25 where it is below float16's normal range (6.1e-5). What that does to a
bound is measured, not assumed: pretrained/README.md gives evaluate.py's numbers for both.
"""
import os
from pathlib import Path

import torch

from draw.checkpoint import (CheckpointError, build_classifier, build_model, describe_history,
                             file_config, load_checkpoint, save_model_dict)
from draw.classifier import ClassifierConfig
from draw.errors import DrawError
from draw.memory import check_inference
from draw.training.rundir import find_checkpoint

# what an exported file keeps: what the model is and how it was made
KEPT = ("format", "version", "config", "model", "run", "epoch", "iteration", "log",
        "started_from")


def export_model(source: str | os.PathLike, destination: str | os.PathLike,
                 half: bool = False) -> dict:
    """Write `destination`: the model file (or run directory) `source` without its training
    state, its parameters as float16 where `half`; returns it. DrawError, before writing, for a
    bad source or the source itself, or a parameter beyond float16's range."""
    _, path = find_checkpoint(os.fspath(source), flag="export-model.py")
    if path is None:
        raise DrawError(f"{source}: the run has no model file yet (it stopped before its "
                        f"first save)")
    destination = Path(destination)
    if destination.exists() and destination.resolve() == path.resolve():
        raise DrawError(f"{destination} is the model file being exported: writing over it would "
                        f"lose its training state; name another file")
    _check_replaceable(destination)
    # built once, so that parameters that do not fit the config are refused here, not by
    # whoever downloads the export; the config's sizes are checked first
    ckpt = load_checkpoint(path)
    cfg = file_config(ckpt, path, classifier=True)
    check_inference(cfg, 1, f"the model of {path}")
    (build_classifier if isinstance(cfg, ClassifierConfig) else build_model)(ckpt, path)
    exported = {key: ckpt[key] for key in KEPT if key in ckpt}
    exported.update(optimizer=None, rng=None)
    if half:
        exported["model"] = _half(exported["model"], path)
    save_model_dict(destination, exported)
    return exported


def _half(state: dict, path: Path) -> dict:
    """`state` with its float32 tensors as float16; DrawError for one whose values float16
    cannot hold (beyond 65504), which would load as infinities."""
    halved = {}
    for name, value in state.items():
        if value.is_floating_point():
            value = value.to(torch.float16)
            if not torch.isfinite(value).all():
                raise DrawError(f"{path}: parameter {name} holds values beyond float16's range "
                                f"(65504); export it without --half")
        halved[name] = value
    return halved


def _check_replaceable(destination: Path) -> None:
    """An existing `destination` may be replaced only where it is an exported model file, as a
    shipped model is by its successor: not a log, another program's file, or a run's model file,
    whose training state would be lost. DrawError otherwise."""
    if not destination.exists():
        return
    try:
        old = load_checkpoint(destination)
    except CheckpointError:
        raise DrawError(f"{destination} exists and is not a model file: not replaced (remove it "
                        f"or name another file)") from None
    if old.get("optimizer") is not None:
        raise DrawError(f"{destination} is a run's model file: writing over it would lose its "
                        f"training state; name another file")


def main(source: str, destination: str, half: bool = False) -> None:
    exported = export_model(source, destination, half)
    n = sum(p.numel() for p in exported["model"].values())
    size = Path(destination).stat().st_size / 2 ** 20
    stored = " as float16" if half else ""
    print(f"wrote {destination}: {n:,} parameters{stored} after epoch {exported['epoch']} "
          f"(iteration {exported['iteration']}), {size:.1f} MB, no training state")
    if exported.get("started_from"):
        print(f"its run started from {describe_history(exported['started_from'])}")
