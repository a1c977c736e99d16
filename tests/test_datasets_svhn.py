"""svhn-multi on small archives made here in SVHN format 1's published layout.

Each archive is a tar.gz of `<folder>/<n>.png` photographs and `<folder>/digitStruct.mat`, an
HDF5 (MATLAB v7.3) file with a 512-byte header, `digitStruct/name` and `digitStruct/bbox` as
(N, 1) object references, each bbox a group of height/label/left/top/width that hold a (1, 1)
value for one digit and (k, 1) references to (1, 1) values for k digits, as the published files
do. The real archives are not here: their Adler-32 checksums and counts are not tested.
"""
import dataclasses
import io
import tarfile
import zlib

import h5py
import numpy as np
import pytest
from PIL import Image

from draw.datasets import DatasetError, convert, get_data
from draw.datasets import svhn
from draw.datasets.files import FileSpec
from draw.datasets.registry import REGISTRY
from draw.datasets.store import converted_path, load_converted
from draw.datasets.svhn import crop_box, read_digit_struct

# photographs: name -> (width, height, colour, boxes as rows of left, top, width, height, label)
PHOTOS = {
    "train": {"1.png": (90, 50, (200, 30, 30), [[20, 10, 12, 25, 1], [32, 12, 14, 24, 10]]),
              "2.png": (60, 70, (30, 200, 30), [[15, 20, 20, 30, 7]]),
              "3.png": (100, 40, (30, 30, 200),                       # six digits: dropped
                        [[5 + 14 * i, 5, 12, 25, i + 1] for i in range(6)])},
    "extra": {"1.png": (80, 80, (220, 220, 0), [[30, 30, 10, 20, 4], [40, 31, 10, 20, 2]]),
              "2.png": (70, 40, (0, 220, 220), [[25, 8, 18, 22, 3]])},
    "test": {"1.png": (64, 64, (250, 250, 250), [[20, 20, 12, 20, 5]])},
}


def digit_struct(photos: dict) -> bytes:
    """A digitStruct.mat in the published layout."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        group = f.create_group("digitStruct")
        names = group.create_dataset("name", (len(photos), 1), dtype=h5py.ref_dtype)
        bboxes = group.create_dataset("bbox", (len(photos), 1), dtype=h5py.ref_dtype)
        for i, (name, (_, _, _, boxes)) in enumerate(photos.items()):
            chars = refs.create_dataset(f"n{i}", data=np.array([[ord(c)] for c in name],
                                                               dtype=np.uint16))
            names[i, 0] = chars.ref
            box = refs.create_group(f"b{i}")
            for column, field in enumerate(("left", "top", "width", "height", "label")):
                values = [row[column] for row in boxes]
                if len(values) == 1:
                    box.create_dataset(field, data=np.array([[float(values[0])]]))
                else:
                    cells = [refs.create_dataset(f"v{i}_{field}_{k}", data=np.array([[float(v)]]))
                             for k, v in enumerate(values)]
                    box.create_dataset(field, data=np.array([[c.ref] for c in cells],
                                                            dtype=h5py.ref_dtype))
            bboxes[i, 0] = box.ref
    data = bytearray(buffer.getvalue())
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2012 HDF5"
    data[:len(header)] = header
    return bytes(data)


def photo(width: int, height: int, colour, boxes) -> bytes:
    """A black photograph with the digits' boxes filled with `colour`."""
    pixels = np.zeros((height, width, 3), np.uint8)
    for left, top, w, h, _ in boxes:
        pixels[top:top + h, left:left + w] = colour
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def archive(folder: str, photos: dict, skip: str | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        members = {f"{folder}/{name}": photo(*spec) for name, spec in photos.items()
                   if name != skip}
        members[f"{folder}/digitStruct.mat"] = digit_struct(photos)   # last, as it may be
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def small_svhn(tmp_path, monkeypatch):
    """The three archives in tmp_path/originals, registered with their own Adler-32."""
    source = tmp_path / "originals"
    source.mkdir()
    files = []
    for folder, photos in PHOTOS.items():
        data = archive(folder, photos)
        (source / f"{folder}.tar.gz").write_bytes(data)
        files.append(FileSpec(f"{folder}.tar.gz", f"adler32:{zlib.adler32(data)}", large=True))
    monkeypatch.setitem(REGISTRY, "svhn-multi",
                        dataclasses.replace(REGISTRY["svhn-multi"], files=tuple(files)))
    monkeypatch.setattr(svhn, "N_VALID", 1)
    return source


def test_digit_struct_round_trip():
    names, boxes = read_digit_struct(digit_struct(PHOTOS["train"]), "d")
    assert names == ["1.png", "2.png", "3.png"]
    for got, (_, _, _, expected) in zip(boxes, PHOTOS["train"].values()):
        assert got.shape == (len(expected), 5) and np.array_equal(got, np.array(expected))
    with pytest.raises(DatasetError, match="d: not a readable SVHN digitStruct.mat"):
        read_digit_struct(b"not hdf5", "d")


def test_crop_box_is_the_union_enlarged_by_30_percent_and_clipped():
    boxes = np.array([[20, 10, 12, 25, 1], [33, 12, 14, 24, 10]], dtype=float)
    # union: x 20..47 (27 wide), y 10..36 (26 high); centre (33.5, 23); 1.3x: 35.1 x 33.8
    assert crop_box(boxes, 90, 50) == (16, 6, 51, 40)
    assert crop_box(boxes, 40, 30) == (16, 6, 40, 30)                    # clipped to the photo
    with pytest.raises(ValueError, match="empty crop"):
        crop_box(np.array([[100, 100, 5, 5, 1]], dtype=float), 50, 50)


def test_convert_crops_every_number_to_64x64(small_svhn, tmp_path):
    convert("svhn-multi", small_svhn, tmp_path / "data")
    data = load_converted(converted_path("svhn-multi", tmp_path / "data"), REGISTRY["svhn-multi"])
    assert (data.shape, data.binary) == ((3, 64, 64), False)
    # train 2 + extra 2 (the six-digit number is dropped) = 3 train + 1 valid; test 1
    assert [len(x) for x in (data.train, data.valid, data.test)] == [3, 1, 1]
    images = np.concatenate([data.train.numpy(), data.valid.numpy()]).reshape(-1, 3, 64, 64)
    colours = [spec[2] for folder in ("train", "extra") for name, spec in PHOTOS[folder].items()
               if len(spec[3]) <= 5]
    centres = sorted(tuple(int(v) for v in image[:, 32, 32]) for image in images)
    assert centres == sorted(colours)                 # each number fills the crop's centre
    for image in images:
        assert image[:, 0, 0].max() < 40              # the 30% margin: background at the corner
    test = data.test.numpy().reshape(3, 64, 64)
    assert tuple(int(v) for v in test[:, 32, 32]) == (250, 250, 250)
    # the model sees 54x54 patches (tests/test_datasets_crops.py): the centre of valid and test
    seen = get_data("svhn-multi", tmp_path / "data", download=False)
    assert seen.shape == (3, 54, 54) and len(seen.train) == 3
    assert np.array_equal(seen.test.numpy().reshape(3, 54, 54), test[:, 5:59, 5:59])


def test_a_damaged_archive_and_a_missing_photograph(small_svhn, tmp_path):
    train = small_svhn / "train.tar.gz"
    train.write_bytes(train.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=r"train.tar.gz: adler32 of its content is \d+, "
                                           r"expected \d+ for train.tar.gz"):
        convert("svhn-multi", small_svhn, tmp_path / "data")
    data = archive("train", PHOTOS["train"], skip="2.png")
    train.write_bytes(data)
    files = tuple(dataclasses.replace(f, checksum=f"adler32:{zlib.adler32(data)}")
                  if f.name == "train.tar.gz" else f for f in REGISTRY["svhn-multi"].files)
    REGISTRY["svhn-multi"] = dataclasses.replace(REGISTRY["svhn-multi"], files=files)
    with pytest.raises(DatasetError, match="train.tar.gz: 1 photographs of train/digitStruct.mat "
                                           "are not in the archive, e.g. train/2.png"):
        convert("svhn-multi", small_svhn, tmp_path / "data")
    assert not (tmp_path / "data").exists()
