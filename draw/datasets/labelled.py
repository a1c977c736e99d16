"""Labelled data for classification (the DRAW paper's Table 1): images with their class numbers.

A split is a `LabelledImages` (stored images, e.g. mnist) or a `ClutteredSplit` (composed batch by
batch, draw/datasets/scenes.py). Both have `len(split)`, `split.labels` ((N,) int64),
`split.batch(index, epoch) -> (uint8 images (B, C*H*W), labels (B,))` and `split.subset(index)`
(a run's --subset).

cluttered-mnist: train composes a fresh image around every training digit in every epoch; epoch
e's images are a function of (seed, e) alone. valid and test are fixed: composed from mnist's
valid and test digits with the fixed seed `FIXED_SEED`, whatever `seed` a run uses, so every run
is scored on the same images; each digit and its distractors come from its own split only.
"""
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from draw.datasets.converted import N_CLASSES
from draw.datasets.errors import DatasetError
from draw.datasets.registry import labelled_datasets
from draw.datasets.scenes import DIGIT, Recipe, cluttered_recipe, compose
from draw.datasets.store import converted_path, dataset_spec, get_data
from draw.datasets.stream import batch_indices

FIXED_SEED = 2014           # cluttered-mnist's valid and test images (Mnih et al. 2014)
_STREAMS = {"train": 0, "valid": 1, "test": 2}


@dataclass
class LabelledImages:
    """A stored split: (N, D) uint8 images and (N,) int64 labels."""
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor | slice,
              epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples `index` ((B,) int64, or a slice): uint8 (B, D) images, int64 (B,) labels."""
        return self.images[index], self.labels[index]

    def subset(self, index: torch.Tensor) -> "LabelledImages":
        return LabelledImages(self.images[index], self.labels[index])


class ClutteredSplit:
    """One split of cluttered MNIST: each of its (N, 784) uint8 MNIST `digits` (also the source
    of its distractors) composed into a 100x100 image. (seed, stream) fix every recipe; stream
    is 0 train, 1 valid, 2 test. `fresh`: a new recipe every epoch (train), or one for all."""

    def __init__(self, digits: torch.Tensor, labels: torch.Tensor, seed: int, stream: int,
                 fresh: bool):
        self.digits = digits.numpy().reshape(-1, DIGIT, DIGIT)           # (N, 28, 28)
        self.labels = labels
        self.seed, self.stream, self.fresh = seed, stream, fresh
        self._cached: tuple[int, Recipe] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def recipe(self, epoch: int = 0) -> Recipe:
        """Where each piece of each example comes from and goes, in `epoch` (cached)."""
        epoch = epoch if self.fresh else 0
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, self.stream, epoch])
            self._cached = (epoch, cluttered_recipe(len(self.digits), rng))
        return self._cached[1]

    def batch(self, index: torch.Tensor | slice,
              epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples `index` ((B,) int64, or a slice) of `epoch`: uint8 (B, 10000), int64 (B,)."""
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        images = compose(self.digits, self.recipe(epoch), index.numpy())
        return torch.from_numpy(images), self.labels[index]

    def subset(self, index: torch.Tensor) -> "ClutteredSplit":
        """The examples `index` only; their distractors then come from these digits too."""
        flat = torch.from_numpy(self.digits.reshape(len(self.digits), -1))
        return ClutteredSplit(flat[index], self.labels[index], self.seed, self.stream, self.fresh)


@dataclass
class LabelledData:
    """A labelled dataset: (C, H, W) of one image, the number of classes, three splits."""
    name: str
    shape: tuple[int, int, int]
    n_classes: int
    train: LabelledImages | ClutteredSplit
    valid: LabelledImages | ClutteredSplit
    test: LabelledImages | ClutteredSplit


def get_labelled(name: str, root=None, download: bool = True, seed: int = 0) -> LabelledData:
    """Load a labelled dataset (`labelled_datasets`), downloading or converting on first use.
    `seed` fixes cluttered-mnist's training images (valid and test use FIXED_SEED)."""
    spec = dataset_spec(name)
    if name not in labelled_datasets:
        raise DatasetError(f"{name} has no labels; labelled datasets: "
                           f"{', '.join(labelled_datasets)}")
    source = spec.base or name
    data = get_data(source, root, download=download)
    if data.train_labels is None:
        raise DatasetError(f"{converted_path(source, root)} was converted without labels (by an "
                           f"earlier version): run `python -m draw.datasets convert {source}`")
    labels = {s: getattr(data, f"{s}_labels") for s in _STREAMS}
    if spec.on_the_fly:
        splits = {s: ClutteredSplit(getattr(data, s), labels[s],
                                    seed if s == "train" else FIXED_SEED, stream, s == "train")
                  for s, stream in _STREAMS.items()}
    else:
        splits = {s: LabelledImages(getattr(data, s), labels[s]) for s in _STREAMS}
    return LabelledData(name, spec.shape, N_CLASSES, **splits)


def labelled_batches(split: LabelledImages | ClutteredSplit, batch_size: int, *,
                     generator: torch.Generator | None = None, epoch: int = 0,
                     device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield one pass over `split` (of `get_labelled`) as minibatches, as `batches` does images:
    (B, C*H*W) `dtype` images in [0, 1] and (B,) int64 labels, on `device`. `epoch` chooses the
    images of a freshly composed split (cluttered-mnist's train)."""
    for index in batch_indices(len(split), batch_size, generator, drop_last):
        images, labels = split.batch(index, epoch)                       # (B, D), (B,)
        x = images.to(device).to(torch.float32).div_(255)                # (B, D) in [0, 1]
        # a copy: a slice of the stored order would otherwise alias the split's labels
        yield x.to(dtype), labels.to(device, copy=True)
