"""A trained model to share: its parameters and where they came from, not how to resume them.

A run's model file holds, besides the parameters, Adam's two moments (twice the parameters
again), every random state and the loop's position, so that the run can resume exactly. The
file a run is published as (e.g. `pretrained/bmnist-r2-w5-t64_model.pkl`) needs none of that:

    python export-model.py RUN_DIR pretrained/bmnist-r2-w5-t64_model.pkl

writes the same model-file format (draw/checkpoint.py) with the config, the
parameters, the run's settings, its epoch and iteration, and its log (the curves behind the
published numbers), and with "optimizer" and "rng" empty. sample.py, evaluate.py, attention
demos and `--oldmodel` read it as they read any model file; `--resume` refuses it in one line.
"""
import os
from pathlib import Path

from draw.checkpoint import (build_classifier, build_model, file_config, load_checkpoint,
                             save_model_dict)
from draw.classifier import ClassifierConfig
from draw.errors import DrawError
from draw.memory import check_inference
from draw.training.rundir import find_checkpoint

# what an exported file keeps: what the model is and how it was made
KEPT = ("format", "version", "config", "model", "run", "epoch", "iteration", "log")


def export_model(source: str | os.PathLike, destination: str | os.PathLike) -> dict:
    """Write `destination`: the model file (or run directory) `source` without its training
    state. Returns what was written. Raises DrawError, one line, before writing anything, for
    a source that is not a model file or a destination that is the source itself."""
    _, path = find_checkpoint(os.fspath(source), flag="export-model.py")
    if path is None:
        raise DrawError(f"{source}: the run has no model file yet (it stopped before its "
                        f"first save)")
    destination = Path(destination)
    if destination.exists() and destination.resolve() == path.resolve():
        raise DrawError(f"{destination} is the model file being exported: writing over it would "
                        f"lose its training state; name another file")
    # rebuilt once, so that a file whose parameters do not fit its config is refused here
    # rather than by whoever downloads the export (a CheckpointError is a DrawError); its
    # config, read alone, is checked first, as sample.py and evaluate.py check it
    ckpt = load_checkpoint(path)
    cfg = file_config(ckpt, path, classifier=True)
    check_inference(cfg, 1, f"the model of {path}")
    (build_classifier if isinstance(cfg, ClassifierConfig) else build_model)(ckpt, path)
    exported = {key: ckpt[key] for key in KEPT if key in ckpt}
    exported.update(optimizer=None, rng=None)
    save_model_dict(destination, exported)
    return exported


def main(source: str, destination: str) -> None:
    exported = export_model(source, destination)
    n = sum(p.numel() for p in exported["model"].values())
    size = Path(destination).stat().st_size / 2 ** 20
    print(f"wrote {destination}: {n:,} parameters after epoch {exported['epoch']} "
          f"(iteration {exported['iteration']}), {size:.1f} MB, no training state")
