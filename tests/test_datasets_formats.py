"""Readers of the original formats and the per-dataset converters, on small files made here.

Each format gets a file built the way the published one is (amat text, IDX, MATLAB v5 via scipy,
Python-2-style CIFAR pickles in a tar.gz), and every kind of bad input gets its one-line error.
"""
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import scipy.io

from draw.datasets import DatasetError
from draw.datasets.files import FileSpec, Original, locate, read_verified
from draw.datasets.formats import (load_mat, parse_amat, parse_idx_images, parse_idx_labels,
                                   read_cifar_archive, read_cifar_batch)
from draw.datasets.registry import REGISTRY

rng = np.random.default_rng(0)


def amat_text(images: np.ndarray, sep: str = " ", newline: str = "\n") -> bytes:
    return "".join(sep.join(map(str, row)) + newline for row in images).encode()


def idx_bytes(images: np.ndarray, magic: bytes = b"\x00\x00\x08\x03") -> bytes:
    return magic + struct.pack(">III", *images.shape) + images.astype(np.uint8).tobytes()


def mat_bytes(variables: dict) -> bytes:
    out = io.BytesIO()
    scipy.io.savemat(out, variables)
    return out.getvalue()


def cifar_pickle(data, labels=None) -> bytes:
    """A CIFAR-10 batch as the published files have it: a protocol 2 pickle of a dict whose
    arrays name NumPy 1's numpy.core.multiarray (the files were written by Python 2)."""
    batch = {"batch_label": "training batch", "labels": labels or [0] * len(data), "data": data,
             "filenames": [f"{i}.png" for i in range(len(data))]}
    return pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray",
                                                   b"numpy.core.multiarray")


def tar_gz(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# ---------------------------------------------------------------- amat

def test_amat_reads_the_published_layout_and_others_alike():
    images = rng.integers(0, 2, size=(5, 784), dtype=np.uint8)
    published = parse_amat(amat_text(images), "x.amat", 784)
    assert published.dtype == np.uint8 and np.array_equal(published, images)
    # tabs, Windows line ends, trailing spaces and trailing blank lines take the general path
    other = amat_text(images, sep="\t", newline=" \r\n") + b"\n\n"
    assert np.array_equal(parse_amat(other, "x.amat", 784), images)


@pytest.mark.parametrize("text, message", [
    (b"0 1 0\n1 1\n", "x.amat, line 2: 2 values; expected 3"),
    (b"0 1 0\n1 1 0 1\n", "x.amat, line 2: 4 values; expected 3"),
    (b"0 1 0\n\n1 1 0\n", "x.amat, line 2: 0 values; expected 3"),
    (b"0 1 0\n0 2 1\n", "x.amat, line 2: found '2'"),
    (b"0 0.5 1\n", "x.amat, line 1: found '.'"),
    (b"0 1 0\n1 10 1\n", "x.amat, line 2: found a multi-digit number"),
    (b"", "x.amat: no images"),
    (b"\n\n", "x.amat: no images"),
])
def test_amat_bad_input(text, message):
    with pytest.raises(DatasetError, match=f"^{message}"):
        parse_amat(text, "x.amat", 3)


# ---------------------------------------------------------------- IDX

def test_idx_round_trip():
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    assert np.array_equal(parse_idx_images(idx_bytes(images), "f"), images)


def test_idx_bad_input():
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    with pytest.raises(DatasetError, match="f: not an IDX image file .*00000801"):
        parse_idx_images(idx_bytes(images, magic=b"\x00\x00\x08\x01"), "f")   # a label file
    with pytest.raises(DatasetError, match="f: not an IDX image file"):
        parse_idx_images(b"", "f")
    with pytest.raises(DatasetError, match=r"f: 2367 bytes; expected 2368 for 3 images of 28x28"):
        parse_idx_images(idx_bytes(images)[:-1], "f")


def idx_label_bytes(labels: np.ndarray) -> bytes:
    return b"\x00\x00\x08\x01" + struct.pack(">I", len(labels)) + labels.tobytes()


def test_idx_labels_round_trip_and_bad_input():
    labels = rng.integers(0, 10, size=17, dtype=np.uint8)
    assert np.array_equal(parse_idx_labels(idx_label_bytes(labels), "f"), labels)
    with pytest.raises(DatasetError, match="f: not an IDX label file .starts 00000803"):
        parse_idx_labels(idx_bytes(rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)), "f")
    with pytest.raises(DatasetError, match="f: 24 bytes; expected 25 for 17 labels"):
        parse_idx_labels(idx_label_bytes(labels)[:-1], "f")
    bad = labels.copy()
    bad[5] = 10
    with pytest.raises(DatasetError, match="f: label 5 is 10; expected a digit 0-9"):
        parse_idx_labels(idx_label_bytes(bad), "f")


def test_mnist_converter_holds_out_the_last_10000_and_checks_the_image_size():
    train = rng.integers(0, 256, size=(10_003, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    files = {"train-images-idx3-ubyte": Original(idx_bytes(train), "tr"),
             "t10k-images-idx3-ubyte": Original(idx_bytes(test), "te")}
    train_labels = rng.integers(0, 10, size=10_003, dtype=np.uint8)
    test_labels = rng.integers(0, 10, size=4, dtype=np.uint8)
    files["train-labels-idx1-ubyte"] = Original(idx_label_bytes(train_labels), "trl")
    files["t10k-labels-idx1-ubyte"] = Original(idx_label_bytes(test_labels), "tel")
    splits = REGISTRY["mnist"].convert(files)
    assert np.array_equal(splits["train"], train[:3].reshape(3, 784))
    assert np.array_equal(splits["valid"], train[3:].reshape(10_000, 784))
    assert np.array_equal(splits["test"], test.reshape(4, 784))
    # the labels are held out exactly as the images are
    assert np.array_equal(splits["train_labels"], train_labels[:3])
    assert np.array_equal(splits["valid_labels"], train_labels[3:])
    assert np.array_equal(splits["test_labels"], test_labels)
    files["t10k-labels-idx1-ubyte"] = Original(idx_label_bytes(test_labels[:3]), "tel")
    with pytest.raises(DatasetError, match="tel: 3 labels for 4 images"):
        REGISTRY["mnist"].convert(files)
    files["t10k-labels-idx1-ubyte"] = Original(idx_label_bytes(test_labels), "tel")

    files["t10k-images-idx3-ubyte"] = Original(idx_bytes(test[:, :27]), "te")
    with pytest.raises(DatasetError, match="te: images are 27x28; expected 28x28"):
        REGISTRY["mnist"].convert(files)
    files["train-images-idx3-ubyte"] = Original(idx_bytes(train[:10_000]), "tr")
    with pytest.raises(DatasetError, match="only 10000 training images; need more than 10000"):
        REGISTRY["mnist"].convert(files)


def test_bmnist_converter_stores_0_and_255():
    amats = {s: rng.integers(0, 2, size=(n, 784), dtype=np.uint8)
             for s, n in (("train", 4), ("valid", 2), ("test", 3))}
    files = {f"binarized_mnist_{s}.amat": Original(amat_text(x), s) for s, x in amats.items()}
    splits = REGISTRY["bmnist"].convert(files)
    for s, x in amats.items():
        assert np.array_equal(splits[s], x * 255)


# ---------------------------------------------------------------- MATLAB

def test_svhn_converter_makes_channel_first_images():
    # X is (H, W, C, N) in the published files; pixel (c, h, w) of image n is X[h, w, c, n]
    X = rng.integers(0, 256, size=(32, 32, 3, 5_002), dtype=np.uint8)
    T = rng.integers(0, 256, size=(32, 32, 3, 3), dtype=np.uint8)
    files = {"train_32x32.mat": Original(mat_bytes({"X": X, "y": np.ones((5_002, 1))}), "tr"),
             "test_32x32.mat": Original(mat_bytes({"X": T, "y": np.ones((3, 1))}), "te")}
    splits = REGISTRY["svhn2"].convert(files)
    assert splits["train"].shape == (2, 3072) and splits["valid"].shape == (5_000, 3072)
    n, c, h, w = 4, 2, 5, 31                                # an image in the valid split
    assert splits["valid"][n - 2].reshape(3, 32, 32)[c, h, w] == X[h, w, c, n]
    assert np.array_equal(splits["test"], T.transpose(3, 2, 0, 1).reshape(3, 3072))


def test_silhouettes_converter_makes_upright_images_with_the_shape_as_1():
    # An asymmetric shape: in the file, 0 marks the shape, 1 the background, and each image is
    # flattened column by column, as MATLAB does.
    shape = np.zeros((28, 28), dtype=np.uint8)
    shape[2, 5:9] = 1                                       # a horizontal bar in row 2
    stored = (1 - shape).flatten(order="F").astype(np.float64)
    data = {v: np.stack([stored] * n) for v, n in
            (("train_data", 3), ("val_data", 2), ("test_data", 1))}
    files = {"caltech101_silhouettes_28_split1.mat": Original(mat_bytes(data), "s.mat")}
    splits = REGISTRY["silhouettes"].convert(files)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [3, 2, 1]
    assert np.array_equal(splits["train"][0].reshape(28, 28), shape * 255)

    data["val_data"] = data["val_data"] * 0.5
    files = {"caltech101_silhouettes_28_split1.mat": Original(mat_bytes(data), "s.mat")}
    with pytest.raises(DatasetError, match=r"s.mat: val_data is float64 \(2, 784\); expected "
                                           r"\(N, 784\) of 0 and 1"):
        REGISTRY["silhouettes"].convert(files)


def test_mat_bad_input():
    good = mat_bytes({"X": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(DatasetError, match="m: has no variable y; expected X, y"):
        load_mat(good, "m", ["X", "y"])
    for bad in (b"", b"not a mat file" * 20, good[:300]):
        with pytest.raises(DatasetError, match="m: not a readable MATLAB file"):
            load_mat(bad, "m", ["X"])
    v73 = b"MATLAB 7.3 MAT-file".ljust(116) + bytes(8) + b"\x00\x02IM" + bytes(512)
    with pytest.raises(DatasetError, match=r"m: a MATLAB v7.3 \(HDF5\) file"):
        load_mat(v73, "m", ["X"])
    floats = mat_bytes({"X": np.zeros((32, 32, 3, 2))})
    with pytest.raises(DatasetError, match=r"tr: X is float64 \(32, 32, 3, 2\); expected uint8"):
        REGISTRY["svhn2"].convert({"train_32x32.mat": Original(floats, "tr"),
                                   "test_32x32.mat": Original(good, "te")})


# ---------------------------------------------------------------- CIFAR

def test_cifar_batch_from_a_python2_style_pickle():
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    raw = cifar_pickle(data)
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw
    assert np.array_equal(read_cifar_batch(raw, "b"), data)


def test_cifar_converter_reads_the_archive_in_order():
    # image i of the training set carries i in its first two bytes
    batches = {}
    for k in range(5):
        data = np.zeros((1_001, 3072), dtype=np.uint8)
        ids = np.arange(k * 1_001, (k + 1) * 1_001)
        data[:, 0], data[:, 1] = ids // 256, ids % 256
        batches[f"cifar-10-batches-py/data_batch_{k + 1}"] = cifar_pickle(data)
    test = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    batches["cifar-10-batches-py/test_batch"] = cifar_pickle(test)
    batches["cifar-10-batches-py/batches.meta"] = pickle.dumps({"label_names": []}, protocol=2)
    files = {"cifar-10-python.tar.gz": Original(tar_gz(batches), "c.tar.gz")}
    splits = REGISTRY["cifar10"].convert(files)
    ids = np.concatenate([splits["train"], splits["valid"]])[:, :2].astype(int) @ [256, 1]
    assert np.array_equal(ids, np.arange(5_005))
    assert len(splits["valid"]) == 5_000 and np.array_equal(splits["test"], test)

    del batches["cifar-10-batches-py/data_batch_3"]
    files = {"cifar-10-python.tar.gz": Original(tar_gz(batches), "c.tar.gz")}
    with pytest.raises(DatasetError, match="c.tar.gz: has no cifar-10-batches-py/data_batch_3"):
        REGISTRY["cifar10"].convert(files)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    raw = pickle.dumps({"data": _Exploit(marker)}, protocol=2)
    with pytest.raises(DatasetError, match=r"b: not a CIFAR-10 python batch .*refusing to load "
                                           r"(posix|nt)\.system"):
        read_cifar_batch(raw, "b")
    assert not marker.exists()


def test_cifar_bad_input():
    with pytest.raises(DatasetError, match=r"b: 'data' is uint8 \(4, 3071\); expected a uint8 "
                                           r"array \(N, 3072\)"):
        read_cifar_batch(cifar_pickle(np.zeros((4, 3071), np.uint8)), "b")
    with pytest.raises(DatasetError, match="b: 'data' is NoneType"):
        read_cifar_batch(pickle.dumps({"labels": [1]}, protocol=2), "b")
    with pytest.raises(DatasetError, match="b: not a CIFAR-10 python batch"):
        read_cifar_batch(cifar_pickle(np.zeros((4, 3072), np.uint8))[:100], "b")
    with pytest.raises(DatasetError, match="c: not a readable tar archive"):
        read_cifar_archive(b"not a tar file" * 100, "c", ["cifar-10-batches-py/test_batch"])


# ---------------------------------------------------------------- checksums and .gz copies

def test_read_verified_plain_and_gzipped_copies(tmp_path):
    data = b"published bytes\n" * 100
    spec = FileSpec("f.amat", f"sha256:{hashlib.sha256(data).hexdigest()}")
    assert locate(spec, tmp_path) is None
    (tmp_path / "f.amat.gz").write_bytes(gzip.compress(data))
    assert locate(spec, tmp_path) == tmp_path / "f.amat.gz"
    assert read_verified(spec, tmp_path / "f.amat.gz") == data
    (tmp_path / "f.amat").write_bytes(data)
    assert locate(spec, tmp_path) == tmp_path / "f.amat"     # the file itself is preferred
    assert read_verified(spec, tmp_path / "f.amat") == data
    md5 = FileSpec("f.amat", f"md5:{hashlib.md5(data).hexdigest()}")
    assert read_verified(md5, tmp_path / "f.amat") == data


def test_read_verified_bad_input(tmp_path):
    data = b"published bytes\n" * 100
    digest = hashlib.sha256(data).hexdigest()
    spec = FileSpec("f.amat", f"sha256:{digest}")
    (tmp_path / "f.amat").write_bytes(data[:-1] + b"X")
    with pytest.raises(DatasetError, match=f"f.amat: sha256 of its content is [0-9a-f]{{64}}, "
                                           f"expected {digest} for f.amat"):
        read_verified(spec, tmp_path / "f.amat")
    (tmp_path / "f.amat.gz").write_bytes(gzip.compress(data)[:-10])
    with pytest.raises(DatasetError, match="f.amat.gz: truncated or corrupt gzip file"):
        read_verified(spec, tmp_path / "f.amat.gz")
    (tmp_path / "f.amat.gz").write_bytes(gzip.compress(data + b"more"))
    with pytest.raises(DatasetError, match="sha256 of its decompressed content is"):
        read_verified(spec, tmp_path / "f.amat.gz")
    with pytest.raises(DatasetError, match="cannot read .*missing"):
        read_verified(spec, tmp_path / "missing")


def test_filespec_rejects_bad_checksums_and_urls():
    with pytest.raises(ValueError, match="checksum must be"):
        FileSpec("f", "crc32:1234")
    spec = FileSpec("f.mat", "md5:00")
    assert spec.stored_as("http://h/d/f.mat") == "f.mat"
    assert spec.stored_as("http://h/d/f.mat.gz") == "f.mat.gz"
    with pytest.raises(ValueError, match="names g.mat"):
        spec.stored_as("http://h/d/g.mat")
