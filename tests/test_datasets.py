"""The datasets contract, the registry, the shipped sample, and the real data beside the project.

The real-data tests use ../shared/data (binarized MNIST .amat and MNIST IDX files, gzipped) and
skip when it is absent; they run `python -m draw.datasets convert` end to end on it.
"""
import dataclasses
import gzip
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from draw.datasets import (Data, DatasetError, batches, convert, get_data, get_labelled,
                           labelled_batches, labelled_datasets, supported_datasets)
from draw.datasets.__main__ import main
from draw.datasets.registry import REGISTRY

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Debian's dataset-fashion-mnist package puts the four official files here
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# Published sha256 of the decompressed files (issue 3; ../shared/data/README.md; TFDS).
PUBLISHED_SHA256 = {
    "binarized_mnist_train.amat":
        "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "binarized_mnist_valid.amat":
        "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def test_supported_datasets_come_from_the_registry():
    # every stored dataset loads as image tensors; cluttered-mnist is composed batch by batch
    assert supported_datasets == tuple(n for n in REGISTRY if n != "cluttered-mnist")
    assert {"bmnist", "mnist", "fashion-mnist", "cifar10", "svhn2", "silhouettes",
            "two-digit-mnist", "sample"} <= set(supported_datasets)
    assert labelled_datasets == tuple(n for n, s in REGISTRY.items() if s.labelled)
    assert {"mnist", "cluttered-mnist"} <= set(labelled_datasets)
    # the fields existing callers use come first, in their old order; labels are optional
    assert [f.name for f in dataclasses.fields(Data)] == [
        "name", "shape", "train", "valid", "test", "binary", "train_labels", "valid_labels",
        "test_labels"]


@pytest.mark.parametrize("name", [n for n in REGISTRY if REGISTRY[n].files])
def test_every_downloadable_file_has_urls_and_a_well_formed_checksum(name):
    spec = REGISTRY[name]
    assert len(spec.shape) == 3 and spec.convert is not None and spec.splits and spec.about
    for f in spec.files:
        assert f.urls and all(u.startswith(("http://", "https://")) for u in f.urls)
        for url in f.urls:
            assert f.stored_as(url) in (f.name, f.name + ".gz")
        algorithm, _, digest = f.checksum.partition(":")
        assert re.fullmatch({"sha256": "[0-9a-f]{64}", "md5": "[0-9a-f]{32}",
                             "adler32": "[0-9]{1,10}"}[algorithm], digest)


def test_registry_checksums_are_the_published_ones():
    registered = {f.name: f.checksum for n in ("bmnist", "mnist") for f in REGISTRY[n].files}
    assert registered == {name: f"sha256:{sha}" for name, sha in PUBLISHED_SHA256.items()}


# ---------------------------------------------------------------- the shipped sample

SAMPLE_SHA256 = {   # of each split's array bytes, as draw/data/mnist_5k.md states
    "train": "8f226914fd20fd8fcb7d88b33c0b6f127eefa53cefa4ca279dae5408b3377c3c",
    "valid": "7d1d6245007aa05e036e8438cc0c1834f9dadd087ce56dcb09f8184fc36d8dea",
    "test": "6b9f2e1caee6e70aada82992f913dc24b4991aafdd9cda90d7c1ae2eba56303f",
}


def test_sample_is_the_documented_data(tmp_path):
    data = get_data("sample", root=tmp_path / "unused", download=False)
    assert (data.name, data.shape, data.binary) == ("sample", (1, 28, 28), False)
    assert [len(x) for x in (data.train, data.valid, data.test)] == [4000, 500, 500]
    for split, sha in SAMPLE_SHA256.items():
        x = getattr(data, split)
        assert x.dtype == torch.uint8 and x.shape[1] == 784
        assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == sha
    assert not (tmp_path / "unused").exists()
    # real digits: dark background, about 13% ink as in all of MNIST; no image in two splits
    mean = data.train.float().mean().item() / 255
    assert 0.1 < mean < 0.16 and data.train[:, 0].eq(0).all()
    rows = [bytes(r) for x in (data.train, data.valid, data.test) for r in x.numpy()]
    assert len(set(rows)) == 5000


def test_sample_streams_into_batches():
    data = get_data("sample")
    x = next(batches(data.train, 100, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (100, 784) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and x.max() == 1


# ---------------------------------------------------------------- real data, when present

needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "binarized_mnist").is_dir() or not (SHARED_DATA / "mnist").is_dir(),
    reason=f"real data not found at {SHARED_DATA} (binarized_mnist/ and mnist/)")


@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    """A data directory with bmnist (through the command line) and mnist converted into it."""
    root = tmp_path_factory.mktemp("data")
    result = subprocess.run(
        [sys.executable, "-m", "draw.datasets", "convert", "bmnist",
         "--from", str(SHARED_DATA / "binarized_mnist"), "--root", str(root)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert main(["convert", "mnist", "--from", str(SHARED_DATA / "mnist"),
                 "--root", str(root)]) == 0
    return root


@needs_shared_data
def test_real_files_match_the_published_checksums():
    for name, sha in PUBLISHED_SHA256.items():
        folder = "binarized_mnist" if name.endswith(".amat") else "mnist"
        data = gzip.decompress((SHARED_DATA / folder / f"{name}.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == sha, name


@needs_shared_data
def test_real_bmnist(real_root):
    assert sorted(p.name for p in real_root.iterdir()) == ["bmnist.npz", "mnist.npz"]
    data = get_data("bmnist", root=real_root, download=False)
    assert (data.shape, data.binary) == ((1, 28, 28), True)
    assert [len(x) for x in (data.train, data.valid, data.test)] == [50_000, 10_000, 10_000]
    for x in (data.train, data.valid, data.test):
        assert x.dtype == torch.uint8 and x.shape[1] == 784
        ink = x == 255
        assert (ink | (x == 0)).all()                                 # only 0 and 255
        assert 0.1 < ink.float().mean().item() < 0.16                 # 13% ink, as in MNIST
    # the test file is sorted by digit: its first 980 images are zeros, wide round shapes
    # with an empty centre; the rest have much more ink in the centre
    centre = data.test.view(-1, 28, 28)[:, 12:16, 12:16].float().mean(dim=(1, 2)) / 255
    assert centre[:980].mean() < 0.2 < centre[980:].mean()


@needs_shared_data
def test_real_mnist(real_root):
    data = get_data("mnist", root=real_root, download=False)
    assert (data.shape, data.binary) == ((1, 28, 28), False)
    assert [len(x) for x in (data.train, data.valid, data.test)] == [50_000, 10_000, 10_000]
    for x in (data.train, data.valid, data.test):
        assert x.dtype == torch.uint8 and x.min() == 0 and x.max() == 255
    raw = gzip.decompress((SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz").read_bytes())
    train = np.frombuffer(raw, np.uint8, offset=16).reshape(60_000, 784)
    assert np.array_equal(data.train.numpy(), train[:50_000])       # valid = the last 10,000
    assert np.array_equal(data.valid.numpy(), train[50_000:])
    # the shipped sample is 5,000 of these very training images
    known = {bytes(r) for r in train}
    sample = get_data("sample")
    assert all(bytes(r) in known for x in (sample.train, sample.valid, sample.test)
               for r in x.numpy())


@needs_shared_data
def test_real_mnist_labels_round_trip(real_root):
    """The labels are read from the real label files, held out exactly as the images are."""
    data = get_data("mnist", root=real_root, download=False)
    raw = {name: gzip.decompress((SHARED_DATA / "mnist" / f"{name}.gz").read_bytes())
           for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")}
    train = np.frombuffer(raw["train-labels-idx1-ubyte"], np.uint8, offset=8)   # (60000,)
    test = np.frombuffer(raw["t10k-labels-idx1-ubyte"], np.uint8, offset=8)     # (10000,)
    for split, expected in (("train", train[:50_000]), ("valid", train[50_000:]),
                            ("test", test)):
        labels = getattr(data, f"{split}_labels")
        assert labels.dtype == torch.int64 and labels.shape == (len(getattr(data, split)),)
        assert np.array_equal(labels.numpy(), expected)
    # MNIST's published facts: its first training labels, and the test set's class counts
    assert train[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert np.bincount(test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # and get_labelled hands out the same pairs
    labelled = get_labelled("mnist", real_root, download=False)
    x, y = next(labelled_batches(labelled.valid, 64))
    assert torch.equal(y, data.valid_labels[:64])
    assert torch.equal(x, data.valid[:64].float() / 255)


@needs_shared_data
def test_real_cluttered_mnist(real_root):
    """Composed from the real digits: sizes, labels, the digit at its place, distractor ink."""
    data = get_labelled("cluttered-mnist", real_root, download=False, seed=0)
    assert [len(s) for s in (data.train, data.valid, data.test)] == [50_000, 10_000, 10_000]
    mnist = get_data("mnist", root=real_root, download=False)
    x, y = next(labelled_batches(data.test, 200))
    assert x.shape == (200, 100 * 100) and torch.equal(y, mnist.test_labels[:200])
    place = data.test.recipe().place[:200, 0]                            # (200, 2)
    for image, (r, c), digit in zip(x.view(-1, 100, 100), place, mnist.test[:200]):
        assert (image[r:r + 28, c:c + 28] >= digit.view(28, 28) / 255).all()
    # 8 patches of 8x8 from MNIST digits add ink: more than the lone digit's 784 * 13%
    ink = x.sum(dim=1).mean() / (mnist.test[:200].float().sum(dim=1).mean() / 255)
    assert 1.2 < ink < 2.5


@needs_shared_data
def test_real_data_with_a_damaged_copy(tmp_path):
    (tmp_path / "src").mkdir()
    good = (SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "src" / "t10k-images-idx3-ubyte.gz").write_bytes(good[:len(good) // 2])
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / "src" / f"{name}.gz").symlink_to(SHARED_DATA / "mnist" / f"{name}.gz")
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz: truncated or corrupt gzip"):
        convert("mnist", tmp_path / "src", tmp_path / "data")
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(not FASHION_MNIST.is_dir(),
                    reason=f"Fashion-MNIST not found at {FASHION_MNIST} (apt-get install "
                           "dataset-fashion-mnist)")
def test_real_fashion_mnist(tmp_path):
    assert main(["convert", "fashion-mnist", "--from", str(FASHION_MNIST),
                 "--root", str(tmp_path)]) == 0
    data = get_data("fashion-mnist", root=tmp_path, download=False)
    assert [len(x) for x in (data.train, data.valid, data.test)] == [50_000, 10_000, 10_000]
    assert data.train.min() == 0 and data.train.max() == 255
    # the published mean pixel of the Fashion-MNIST training set is 0.2860
    mean = torch.cat([data.train, data.valid]).float().mean().item() / 255
    assert abs(mean - 0.2860) < 0.0005
