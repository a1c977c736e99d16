"""Each split as a `torch.utils.data.Dataset`, for a training loop of one's own:

    from torch.utils.data import DataLoader
    from draw.datasets import get_dataset
    for x in DataLoader(get_dataset("bmnist", "train"), batch_size=100, shuffle=True):
        ...                           # x: (100, 784) float32 in [0, 1]

The same images as train-draw.py's, made the same way (u8 / 255, flat (C*H*W,) in (C, H, W)
order, as the classic Flatten stream gave them). train-draw.py itself keeps `batches`
(draw/datasets/stream.py): a batch is then one index into the whole split in memory, on the
device, where a DataLoader fetches and stacks B examples one by one.
"""
import torch
from torch.utils.data import Dataset

from draw.datasets.converted import SPLITS
from draw.datasets.crops import RandomCrops
from draw.datasets.errors import DatasetError
from draw.datasets.labelled import ClutteredSplit, LabelledImages, get_labelled
from draw.datasets.store import dataset_spec, get_data


class SplitDataset(Dataset):
    """One split of `get_data` or `get_labelled`: example i is its image, float32 (C*H*W,) in
    [0, 1], or (image, int64 label) for a labelled split. `epoch` chooses which images a freshly
    composed split (cluttered-mnist's train) or patches (svhn-multi's train) give: set it
    before each epoch for new ones, as the training scripts draw them."""

    def __init__(self, split: torch.Tensor | RandomCrops | LabelledImages | ClutteredSplit,
                 epoch: int = 0):
        self.split, self.epoch = split, epoch

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {n} examples")
        i = int(i) % n
        if isinstance(self.split, torch.Tensor):
            return self.split[i].to(torch.float32).div_(255)                 # (C*H*W,)
        if isinstance(self.split, RandomCrops):
            patch = self.split.patches(torch.tensor([i]), self.epoch)[0]    # (C*h*w,)
            return patch.to(torch.float32).div_(255)
        images, labels = self.split.batch(torch.tensor([i]), self.epoch)    # (1, C*H*W), (1,)
        return images[0].to(torch.float32).div_(255), labels[0]


def get_dataset(name: str, split: str = "train", root=None, *, labels: bool = False,
                download: bool = True, seed: int = 0) -> SplitDataset:
    """A split ("train", "valid" or "test") of dataset `name` as a `torch.utils.data.Dataset`:
    its images, or with `labels` (image, label) pairs of one of `labelled_datasets`. `root`,
    `download` and `seed` are those of `get_data` and `get_labelled`; DatasetError for an
    unknown dataset or split, a dataset without labels when `labels`, or missing files."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if labels:
        data = get_labelled(name, root, download=download, seed=seed)
    elif dataset_spec(name).on_the_fly:
        raise DatasetError(f"{name} is composed with its labels for classification: "
                           f"get_dataset({name!r}, {split!r}, labels=True)")
    else:
        data = get_data(name, root, download=download, seed=seed)
    return SplitDataset(getattr(data, split))
