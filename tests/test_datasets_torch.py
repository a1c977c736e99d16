"""draw.datasets.get_dataset: each split as a torch Dataset, on the shipped `sample` data; its
DataLoader batches are the images train-draw.py's in-memory batches hold."""
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from draw.datasets import (DatasetError, SplitDataset, batches, get_data, get_dataset,
                           labelled_batches)
from draw.datasets.labelled import ClutteredSplit, LabelledImages


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_each_split_is_a_dataset_of_flat_floats(split):
    images = getattr(get_data("sample"), split)                          # (N, 784) uint8
    dataset = get_dataset("sample", split)
    assert isinstance(dataset, torch.utils.data.Dataset) and len(dataset) == len(images)
    for i in (0, 7, len(images) - 1, -1):
        x = dataset[i]
        assert x.dtype == torch.float32 and x.shape == (784,)
        assert torch.equal(x, images[i].float() / 255)


def test_a_data_loader_gives_the_runs_batches():
    """The docstring's three lines, on the sample: in order, the batches of `batches`; shuffled,
    every image once."""
    train = get_data("sample").train
    for x, want in zip(DataLoader(get_dataset("sample", "train"), batch_size=100),
                       batches(train, 100)):
        assert torch.equal(x, want)
    shuffled = DataLoader(get_dataset("sample", "train"), batch_size=100, shuffle=True,
                          generator=torch.Generator().manual_seed(0))
    seen = torch.cat(list(shuffled))                                     # (4000, 784)
    assert seen.shape == (len(train), 784) and not torch.equal(seen, train.float() / 255)
    assert sorted(map(tuple, (seen * 255).round().to(torch.uint8).tolist())) == \
        sorted(map(tuple, train.tolist()))


def test_labelled_splits_give_pairs_and_cluttered_ones_their_epochs_images():
    sample = get_data("sample")
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, 10, 40)).long()
    stored = SplitDataset(LabelledImages(sample.test[:40], labels))
    x, y = next(iter(DataLoader(stored, batch_size=8)))
    assert x.shape == (8, 784) and y.dtype == torch.int64 and torch.equal(y, labels[:8])
    assert torch.equal(x, sample.test[:8].float() / 255)

    # cluttered MNIST composed from the sample's digits: the images labelled_batches composes
    cluttered = ClutteredSplit(sample.train[:40], labels, seed=1, stream=0, fresh=True)
    dataset = SplitDataset(cluttered, epoch=2)
    want_x, want_y = next(labelled_batches(cluttered, 40, epoch=2))
    x, y = next(iter(DataLoader(dataset, batch_size=40)))
    assert x.shape == (40, 100 * 100) and torch.equal(x, want_x) and torch.equal(y, want_y)
    dataset.epoch = 3                                    # a fresh epoch, fresh training images
    assert not torch.equal(dataset[0][0], want_x[0]) and dataset[0][1] == want_y[0]


def test_it_can_go_to_worker_processes():
    dataset = get_dataset("sample", "valid")
    assert torch.equal(pickle.loads(pickle.dumps(dataset))[3], dataset[3])


def test_bad_requests_are_one_line():
    with pytest.raises(DatasetError, match="unknown split 'validation'; choose from train, "
                                           "valid, test"):
        get_dataset("sample", "validation")
    with pytest.raises(DatasetError, match="sample has no labels"):
        get_dataset("sample", "test", labels=True)
    with pytest.raises(DatasetError, match=r"get_dataset\('cluttered-mnist', 'test', "
                                           r"labels=True\)"):
        get_dataset("cluttered-mnist", "test")
    with pytest.raises(IndexError, match="index 500 is out of range for 500 examples"):
        get_dataset("sample", "test")[500]
