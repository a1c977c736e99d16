"""Datasets for DRAW, replacing Fuel: download with checksums, conversion, in-memory minibatches.

    data = get_data("bmnist")                       # downloads and converts on first use
    for x in batches(data.train, 100, generator=torch.Generator().manual_seed(0)):
        ...                                         # x: (100, 784) float32 in [0, 1]

    data = get_labelled("cluttered-mnist", seed=0)  # classification: images with labels
    for x, y in labelled_batches(data.train, 100, generator=g, epoch=e):
        ...                                         # x: (100, 10000) in [0, 1], y: (100,) int64

Each split is also a `torch.utils.data.Dataset`, for a training loop of one's own:
`get_dataset("bmnist", "train")` (draw/datasets/torch_dataset.py).

Command line: `python -m draw.datasets list | download NAME | convert NAME [--from DIR]`.
The datasets, their files, checksums and splits are in `draw.datasets.registry`; cluttered and
two-digit MNIST are composed in `draw.datasets.scenes`, labelled splits are in
`draw.datasets.labelled`, svhn-multi's 54x54 patches are cut in `draw.datasets.crops`.
"""
from draw.datasets.converted import Data
from draw.datasets.errors import DatasetError
from draw.datasets.labelled import LabelledData, get_labelled, labelled_batches
from draw.datasets.registry import labelled_datasets, supported_datasets
from draw.datasets.store import convert, data_root, download_dataset, get_data
from draw.datasets.stream import batches
from draw.datasets.torch_dataset import SplitDataset, get_dataset

__all__ = ["Data", "DatasetError", "LabelledData", "SplitDataset", "batches", "convert",
           "data_root", "download_dataset", "get_data", "get_dataset", "get_labelled",
           "labelled_batches", "labelled_datasets", "supported_datasets"]
