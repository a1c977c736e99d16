"""Conversion into the data directory, loading, the CLI, and what bad input leaves behind.

A small binarized-MNIST-format dataset (amat text files with their own checksums) stands in for
"bmnist" in the registry, so the real converter runs end to end in milliseconds.
"""
import dataclasses
import errno
import gzip
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from draw.datasets import DatasetError, convert, data_root, get_data
from draw.datasets.__main__ import main
from draw.datasets.files import FileSpec
from draw.datasets.registry import REGISTRY
from draw.datasets.store import converted_path, raw_dir

SPLITS = {"train": 6, "valid": 3, "test": 4}


def amat_text(images: np.ndarray) -> bytes:
    return "".join(" ".join(map(str, row)) + "\n" for row in images).encode()


@pytest.fixture
def small_bmnist(tmp_path, monkeypatch):
    """A "bmnist" of 6 / 3 / 4 images; returns (directory of its .amat.gz files, the images)."""
    rng = np.random.default_rng(0)
    source = tmp_path / "originals"
    source.mkdir()
    images, files = {}, []
    for split, n in SPLITS.items():
        images[split] = rng.integers(0, 2, size=(n, 784), dtype=np.uint8)
        text = amat_text(images[split])
        name = f"binarized_mnist_{split}.amat"
        (source / f"{name}.gz").write_bytes(gzip.compress(text))
        files.append(FileSpec(name, f"sha256:{hashlib.sha256(text).hexdigest()}",
                              check=REGISTRY["bmnist"].files[0].check))   # bmnist's own parser
    monkeypatch.setitem(REGISTRY, "bmnist",
                        dataclasses.replace(REGISTRY["bmnist"], files=tuple(files)))
    return source, images


def assert_untouched(root):
    """Nothing at all in the data directory: no converted file and no temporary file."""
    assert not root.exists() or [p.name for p in root.rglob("*") if p.is_file()] == []


def test_convert_from_gz_copies_round_trips(small_bmnist, tmp_path, capsys):
    source, images = small_bmnist
    root = tmp_path / "data"
    assert main(["convert", "bmnist", "--from", str(source), "--root", str(root)]) == 0
    assert [p.name for p in root.iterdir()] == ["bmnist.npz"]
    assert "bmnist: wrote" in capsys.readouterr().err
    data = get_data("bmnist", root=root, download=False)
    assert (data.name, data.shape, data.binary) == ("bmnist", (1, 28, 28), True)
    for split in SPLITS:
        x = getattr(data, split)
        assert x.dtype == torch.uint8
        assert np.array_equal(x.numpy(), images[split] * 255)


def test_convert_from_plain_files(small_bmnist, tmp_path):
    source, images = small_bmnist
    for gz in source.iterdir():
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    path = convert("bmnist", source, tmp_path)
    assert path == tmp_path / "bmnist.npz"
    assert np.array_equal(get_data("bmnist", tmp_path).test.numpy(), images["test"] * 255)


@pytest.mark.parametrize("download", [False, True])
def test_get_data_converts_downloaded_files_without_network(small_bmnist, tmp_path, download):
    # the stand-in files have no URLs: any attempt to download would fail
    source, images = small_bmnist
    raw = raw_dir("bmnist", tmp_path)
    raw.mkdir(parents=True)
    for f in source.iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    data = get_data("bmnist", root=tmp_path, download=download)
    assert np.array_equal(data.valid.numpy(), images["valid"] * 255)


def test_missing_files(small_bmnist, tmp_path, capsys):
    source, _ = small_bmnist
    (source / "binarized_mnist_valid.amat.gz").unlink()
    root = tmp_path / "data"
    assert main(["convert", "bmnist", "--from", str(source), "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert err == ("error: bmnist: binarized_mnist_valid.amat or binarized_mnist_valid.amat.gz: "
                   f"not found in {source}\n")
    assert_untouched(root)
    with pytest.raises(DatasetError, match="no such directory"):
        convert("bmnist", tmp_path / "nowhere", root)
    with pytest.raises(DatasetError, match="a file: --from takes the folder that holds the files"):
        convert("bmnist", source / "binarized_mnist_train.amat.gz", root)


def test_wrong_checksum(small_bmnist, tmp_path, capsys):
    source, images = small_bmnist
    flipped = images["test"].copy()
    flipped[0, 0] ^= 1
    (source / "binarized_mnist_test.amat.gz").write_bytes(gzip.compress(amat_text(flipped)))
    root = tmp_path / "data"
    assert main(["convert", "bmnist", "--from", str(source), "--root", str(root)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"error: {source}/binarized_mnist_test.amat.gz: sha256 of its "
                              "decompressed content is ")
    assert_untouched(root)


@pytest.mark.parametrize("damage, fault", [
    (lambda text: text.replace(b"1", b"2", 1), "line 1: found '2'; expected only 0/1 values"),
    (lambda text: text.replace(b" ", b"", 1), "line 1: found a multi-digit number"),
    (lambda text: text[:-4], "line 4: 782 values; expected 784"),
])
def test_damaged_amat_names_the_line_and_value_at_fault(small_bmnist, tmp_path, capsys, damage,
                                                        fault):
    """Issue 15: damaged content is reported where it is damaged, not only as a checksum."""
    source, images = small_bmnist
    (source / "binarized_mnist_test.amat.gz").write_bytes(
        gzip.compress(damage(amat_text(images["test"]))))
    root = tmp_path / "data"
    assert main(["convert", "bmnist", "--from", str(source), "--root", str(root)]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"error: {source}/binarized_mnist_test.amat.gz, {fault}")
    assert "(a damaged file: sha256 of its decompressed content is " in err
    assert_untouched(root)


def test_truncated_gz(small_bmnist, tmp_path, capsys):
    source, _ = small_bmnist
    gz = source / "binarized_mnist_train.amat.gz"
    gz.write_bytes(gz.read_bytes()[:-20])
    root = tmp_path / "data"
    assert main(["convert", "bmnist", "--from", str(source), "--root", str(root)]) == 1
    assert (f"error: {gz}: truncated or corrupt gzip file"
            in capsys.readouterr().err.splitlines()[-1])
    assert_untouched(root)


def test_wrong_values_in_a_file_with_the_right_checksum(small_bmnist, tmp_path, monkeypatch,
                                                        capsys):
    # a file that matches its (here, made-up) checksum but has a 2 in it: the reader says so
    source, images = small_bmnist
    text = amat_text(images["valid"]).replace(b"1", b"2", 1)
    (source / "binarized_mnist_valid.amat.gz").write_bytes(gzip.compress(text))
    spec = REGISTRY["bmnist"]
    files = tuple(dataclasses.replace(f, checksum=f"sha256:{hashlib.sha256(text).hexdigest()}")
                  if "valid" in f.name else f for f in spec.files)
    monkeypatch.setitem(REGISTRY, "bmnist", dataclasses.replace(spec, files=files))
    root = tmp_path / "data"
    assert main(["convert", "bmnist", "--from", str(source), "--root", str(root)]) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"error: {source}/binarized_mnist_valid.amat.gz, line 1: found '2'")
    assert_untouched(root)


def test_full_disk_leaves_nothing(small_bmnist, tmp_path, monkeypatch, capsys):
    source, _ = small_bmnist

    def write_onto_a_full_disk(fp, array, **kwargs):
        fp.write(b"\x93NUMPY the first bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", write_onto_a_full_disk)
    root = tmp_path / "data"
    assert main(["convert", "bmnist", "--from", str(source), "--root", str(root)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: cannot write {root}/bmnist.npz: No space left on device")
    assert_untouched(root)


def test_ctrl_c_leaves_nothing(small_bmnist, tmp_path, monkeypatch, capsys):
    source, _ = small_bmnist

    def interrupted(fp, array, **kwargs):
        fp.write(b"\x93NUMPY the first bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(np.lib.format, "write_array", interrupted)
    root = tmp_path / "data"
    assert main(["convert", "bmnist", "--from", str(source), "--root", str(root)]) == 130
    assert "interrupted" in capsys.readouterr().err.splitlines()[-1]
    assert_untouched(root)


def test_an_existing_file_survives_a_failed_conversion(small_bmnist, tmp_path, monkeypatch):
    source, images = small_bmnist
    convert("bmnist", source, tmp_path)
    before = (tmp_path / "bmnist.npz").read_bytes()

    def write_onto_a_full_disk(fp, array, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", write_onto_a_full_disk)
    with pytest.raises(DatasetError, match="No space left on device"):
        convert("bmnist", source, tmp_path)
    assert (tmp_path / "bmnist.npz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bmnist.npz", "originals"]


def test_corrupt_and_foreign_converted_files(small_bmnist, tmp_path):
    source, _ = small_bmnist
    path = convert("bmnist", source, tmp_path)
    good = path.read_bytes()
    fix = r"delete it and run `python -m draw.datasets convert bmnist`"
    cases = [
        (b"junk", r"unreadable \(.*\)"),
        (good[:len(good) // 2], r"unreadable \(.*\)"),
    ]
    for content, message in cases:
        path.write_bytes(content)
        with pytest.raises(DatasetError, match=f"{path}: {message}; {fix}") as info:
            get_data("bmnist", tmp_path)
        assert "allow_pickle" not in str(info.value)      # numpy's advice is not passed on
    np.save(path.with_suffix(".npy"), np.zeros(3))
    path.write_bytes(path.with_suffix(".npy").read_bytes())       # one .npy array, not an archive
    with pytest.raises(DatasetError, match="unreadable"):
        get_data("bmnist", tmp_path)
    with open(path, "wb") as f:
        np.savez(f, train=np.zeros((2, 784), np.uint8))
    with pytest.raises(DatasetError, match=f"{path}: not a converted dataset of this project"):
        get_data("bmnist", tmp_path)
    with open(path, "wb") as f:                                    # mnist's file under this name
        np.savez(f, format=np.array("draw-dataset"), version=np.array(1), name=np.array("mnist"),
                 shape=np.array((1, 28, 28)), binary=np.array(False),
                 train=np.zeros((2, 784), np.uint8), valid=np.zeros((2, 784), np.uint8),
                 test=np.zeros((2, 784), np.uint8))
    with pytest.raises(DatasetError, match=r"holds \{.*'name': 'mnist'.*\}, expected"):
        get_data("bmnist", tmp_path)
    with open(path, "wb") as f:                                    # right header, wrong pixels
        np.savez(f, format=np.array("draw-dataset"), version=np.array(1), name=np.array("bmnist"),
                 shape=np.array((1, 28, 28)), binary=np.array(True),
                 train=np.full((2, 784), 7, np.uint8), valid=np.zeros((2, 784), np.uint8),
                 test=np.zeros((2, 783), np.uint8))
    with pytest.raises(DatasetError, match="train split has values other than 0 and 255"):
        get_data("bmnist", tmp_path)


def test_not_present_and_no_download(tmp_path):
    with pytest.raises(DatasetError) as e:
        get_data("cifar10", root=tmp_path, download=False)
    assert str(e.value) == (
        f"cifar10 is not in {tmp_path}: run `python -m draw.datasets download cifar10`, or put "
        "cifar-10-python.tar.gz in a directory DIR and run `python -m draw.datasets convert "
        "cifar10 --from DIR`")
    with pytest.raises(DatasetError) as e:
        get_data("bmnist", root=tmp_path, download=False)
    assert str(e.value) == (
        f"bmnist is not in {tmp_path}: run `python -m draw.datasets download bmnist`, or put "
        "binarized_mnist_train.amat or binarized_mnist_train.amat.gz, binarized_mnist_valid.amat "
        "or binarized_mnist_valid.amat.gz, binarized_mnist_test.amat or "
        "binarized_mnist_test.amat.gz in a directory DIR and run `python -m draw.datasets "
        "convert bmnist --from DIR`")
    with pytest.raises(DatasetError) as e:
        get_data("two-digit-mnist", root=tmp_path, download=False)
    assert str(e.value).startswith(f"two-digit-mnist (made from mnist) is not in {tmp_path}: run "
                                   "`python -m draw.datasets download two-digit-mnist`, or put "
                                   "train-images-idx3-ubyte or train-images-idx3-ubyte.gz, ")
    assert str(e.value).endswith("`python -m draw.datasets convert two-digit-mnist --from DIR`")
    assert_untouched(tmp_path)


def test_unknown_names_and_bad_command_lines(capsys):
    with pytest.raises(DatasetError, match="unknown dataset 'mnits'; supported: bmnist, mnist, "):
        get_data("mnits")
    assert main(["convert", "mnits"]) == 1
    assert capsys.readouterr().err.startswith("error: unknown dataset 'mnits'; supported: ")
    assert main(["convert", "sample"]) == 1
    assert capsys.readouterr().err == ("error: sample ships with the package; there is nothing "
                                       "to convert\n")
    for argv in (["fetch", "mnist"], ["download"], ["download", "mnist", "--timeout", "soon"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1


def test_command_line_entry_point_gives_one_line_and_status_1(tmp_path):
    result = subprocess.run([sys.executable, "-m", "draw.datasets", "convert", "bmnist", "--from",
                             str(tmp_path), "--root", str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(
        "error: bmnist: binarized_mnist_train.amat or binarized_mnist_train.amat.gz, "
        "binarized_mnist_valid.amat or binarized_mnist_valid.amat.gz, binarized_mnist_test.amat "
        "or binarized_mnist_test.amat.gz: not found in ")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "data").exists()


def test_list(small_bmnist, tmp_path, capsys):
    source, _ = small_bmnist
    convert("bmnist", source, tmp_path)
    raw = raw_dir("svhn2", tmp_path)
    raw.mkdir(parents=True)
    (raw / "test_32x32.mat").write_bytes(b"x" * 2000)
    capsys.readouterr()
    assert main(["list", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"data directory: {tmp_path}"
    table = out[2:out.index("")]
    rows = {line.split()[0]: line for line in table}
    assert list(rows) == list(REGISTRY)
    assert out[out.index("") + 1] == "train / valid / test:"
    splits = {line.split()[0]: line for line in out[out.index("") + 2:]}
    assert "train = first 50,000 training images, valid = last 10,000" in splits["mnist"]
    assert "converted" in rows["bmnist"] and str(tmp_path / "bmnist.npz") in rows["bmnist"]
    assert "downloaded, not converted" in rows["svhn2"] and "2.0 KB" in rows["svhn2"]
    assert "missing" in rows["cifar10"] and "draw-datasets download cifar10" in rows["cifar10"]
    assert "shipped" in rows["sample"] and "mnist_5k.npz" in rows["sample"]


def test_data_root_precedence(tmp_path, monkeypatch):
    for var in ("DRAW_DATA_PATH", "FUEL_DATA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if sys.platform.startswith("linux"):
        assert data_root() == tmp_path / "cache" / "draw"
    monkeypatch.setenv("FUEL_DATA_PATH", f"{tmp_path / 'fuel'}{os.pathsep}{tmp_path / 'other'}")
    assert data_root() == tmp_path / "fuel"
    monkeypatch.setenv("DRAW_DATA_PATH", str(tmp_path / "draw"))
    assert data_root() == tmp_path / "draw"
    assert converted_path("mnist") == tmp_path / "draw" / "mnist.npz"
    assert data_root(tmp_path / "flag") == tmp_path / "flag"
