"""Datasets for DRAW, replacing Fuel: download with checksums, conversion, in-memory minibatches.

    data = get_data("bmnist")                       # downloads and converts on first use
    for x in batches(data.train, 100, generator=torch.Generator().manual_seed(0)):
        ...                                         # x: (100, 784) float32 in [0, 1]

Command line: `python -m draw.datasets list | download NAME | convert NAME [--from DIR]`.
The datasets, their files, checksums and splits are in `draw.datasets.registry`.
"""
from draw.datasets.errors import DatasetError
from draw.datasets.registry import supported_datasets
from draw.datasets.store import Data, convert, data_root, download_dataset, get_data
from draw.datasets.stream import batches

__all__ = ["Data", "DatasetError", "batches", "convert", "data_root", "download_dataset",
           "get_data", "supported_datasets"]
