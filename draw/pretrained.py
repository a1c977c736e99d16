"""The models shipped in pretrained/, as torch.hub entry points (hubconf.py at the repository root).

Every `pretrained/<file>_model.pkl` is an entry point named after its file, dashes and dots as
underscores (`bmnist-r2-w5-t64_model.pkl` is `bmnist_r2_w5_t64`), with no code to change:

    model = torch.hub.load("path/to/draw", "bmnist_r2_w5_t64", source="local")
    canvases = model.sample(16)            # (T, 16, 784): sigma(c_t) after every glimpse

Each returns a DrawModel or an AttentionClassifier, rebuilt by the safe loaders of
draw/checkpoint.py, on `device`, in eval mode.
"""
import os
from collections.abc import Callable
from pathlib import Path

import torch

from draw.checkpoint import CheckpointError, ClassifierFileError, load_classifier, load_model

SUFFIX = "_model.pkl"


def entry_name(path: str | os.PathLike) -> str:
    """The entry point of a model file: `bmnist-r2-w5-t64_model.pkl` -> `bmnist_r2_w5_t64`."""
    return Path(path).name[:-len(SUFFIX)].replace("-", "_").replace(".", "_")


def load_pretrained(path: str | os.PathLike,
                    device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of a model file, DRAW's or a classifier's, on `device`, in eval mode;
    CheckpointError, one line, for a missing file or one that is not a model file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: this copy of the repository does not hold "
                              f"that pretrained model")
    try:
        model, _ = load_model(path, map_location=device)
    except ClassifierFileError:
        model, _ = load_classifier(path, map_location=device)
    return model.eval()


def _entry(path: Path) -> Callable[..., torch.nn.Module]:
    def load(device: str | torch.device = "cpu") -> torch.nn.Module:
        return load_pretrained(path, device)

    load.__name__ = load.__qualname__ = entry_name(path)
    load.__doc__ = (f"The pretrained model {path.parent.name}/{path.name} (described in "
                    f"{path.parent.name}/README.md), on `device`, in eval mode.")
    return load


def entry_points(directory: str | os.PathLike) -> dict[str, Callable[..., torch.nn.Module]]:
    """One torch.hub entry point per model file in `directory`, by `entry_name`."""
    return {entry_name(path): _entry(path)
            for path in sorted(Path(directory).glob(f"*{SUFFIX}"))}
