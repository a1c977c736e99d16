"""SVHN format 1 (whole house-number photographs) cropped to the numbers, 64x64: svhn-multi.

The DRAW paper (section 4.4) generates multi-digit house numbers from the 64x64 images of
Goodfellow et al. 2013's preprocessing, 231,053 for training and 4,701 for validation, made
from SVHN format 1 (Netzer et al. 2011): the archives train.tar.gz, extra.tar.gz and test.tar.gz,
each holding PNG photographs and a digitStruct.mat (MATLAB v7.3, that is HDF5) with every
digit's box. Goodfellow et al.'s preprocessing, done here: the smallest rectangle holding all of
a number's digit boxes, enlarged by 30% in x and in y about its centre, cropped from the
photograph and resized to 64x64. These are stored; the DRAW paper's model sees 54x54 patches
of them, cut at random places for training and from the centre for validation: cut while
training, draw/datasets/crops.py. Where the papers are silent, these are choices, said where
they are made:
- the enlarged box is clipped to the photograph (no padding);
- resizing is Pillow's bilinear filter (antialiased when shrinking);
- numbers of more than 5 digits are dropped, as Goodfellow et al. do (their model reads at most
  5). train + extra hold 33,402 + 202,353 = 235,755 photographs (the counts published with the
  data); the DRAW paper's 231,053 + 4,701 = 235,754, one fewer, which a single 6-digit number
  in train would explain; that is not verified against the real archives here;
- valid = 4,701 photographs of train + extra chosen at random with a fixed seed, train = the rest;
  test = test.tar.gz's 13,068 (the paper reports no test numbers).

The archives are read twice as streams (first for digitStruct.mat, then for the PNGs in archive
order), so neither a 1.9 GB archive nor its photographs are ever held in memory at once.
"""
import io
import tarfile
import zlib
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from draw.datasets.errors import DatasetError

SIDE = 64
PATCH = 54                 # DRAW section 4.4: the model sees 54x54 patches of the 64x64 images
ENLARGE = 1.3              # Goodfellow et al. 2013: "expand this bounding box by 30%"
MAX_DIGITS = 5
N_VALID = 4_701            # the DRAW paper's validation set size
VALID_SEED = 1502_04623
_FIELDS = ("left", "top", "width", "height", "label")


def read_digit_struct(data: bytes, where: str) -> tuple[list[str], list[np.ndarray]]:
    """Read a format-1 digitStruct.mat: each photograph's file name (e.g. "1.png", in the file's
    order) and its boxes, (k, 5) float64: left, top, width, height, label of its k digits (label
    10 is the digit 0, as published)."""
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            group = f["digitStruct"]
            name_refs, box_refs = group["name"][()].ravel(), group["bbox"][()].ravel()
            if len(name_refs) != len(box_refs):
                raise DatasetError(f"{where}: {len(name_refs)} names but {len(box_refs)} boxes")
            names, boxes = [], []
            for name_ref, box_ref in tqdm(zip(name_refs, box_refs), total=len(name_refs),
                                          desc=f"reading {Path(where).name}", unit="photo",
                                          delay=2, disable=None):
                names.append("".join(map(chr, f[name_ref][()].ravel())))
                box = f[box_ref]
                columns = [_field(f, box[field]) for field in _FIELDS]
                if len({len(c) for c in columns}) != 1:
                    raise DatasetError(f"{where}: {names[-1]} has fields of different lengths")
                boxes.append(np.stack(columns, axis=1))                   # (k, 5)
    except DatasetError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise DatasetError(f"{where}: not a readable SVHN digitStruct.mat ({type(e).__name__}: "
                           f"{e})") from None
    return names, boxes


def _field(f, dataset) -> np.ndarray:
    """One field of one photograph's boxes: k values, stored inline (k = 1) or by reference."""
    values = dataset[()].ravel()
    if dataset.dtype.kind == "O":                                         # references
        return np.array([f[ref][()].item() for ref in values], dtype=np.float64)
    return values.astype(np.float64)


def crop_box(boxes: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The crop of one photograph: (left, top, right, bottom) in pixels, right/bottom exclusive.

    The union of the digit boxes, enlarged by 30% about its centre, clipped to the photograph.
    """
    left, top = boxes[:, 0].min(), boxes[:, 1].min()
    right, bottom = (boxes[:, 0] + boxes[:, 2]).max(), (boxes[:, 1] + boxes[:, 3]).max()
    cx, cy = (left + right) / 2, (top + bottom) / 2
    half_w, half_h = (right - left) * ENLARGE / 2, (bottom - top) * ENLARGE / 2
    box = (max(0, int(round(cx - half_w))), max(0, int(round(cy - half_h))),
           min(width, int(round(cx + half_w))), min(height, int(round(cy + half_h))))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"empty crop {box} in a {width}x{height} photograph")
    return box


def read_archive(path: Path, where: str, folder: str) -> np.ndarray:
    """Every kept photograph of one verified format-1 archive, cropped: (N, 3*64*64) uint8,
    (C, H, W). `folder` ("train", "extra", "test") holds its digitStruct.mat and PNGs."""
    struct_name = f"{folder}/digitStruct.mat"
    try:
        with tarfile.open(path, mode="r|gz") as archive:                  # a stream: one pass
            for member in archive:
                if member.name == struct_name:
                    names, boxes = read_digit_struct(archive.extractfile(member).read(),
                                                     f"{where}:{struct_name}")
                    break
            else:
                raise DatasetError(f"{where}: has no {struct_name}; expected SVHN format 1's "
                                   f"{folder}.tar.gz")
        keep = [i for i, b in enumerate(boxes) if 1 <= len(b) <= MAX_DIGITS]
        row = {f"{folder}/{names[i]}": r for r, i in enumerate(keep)}
        images = np.zeros((len(keep), 3 * SIDE * SIDE), np.uint8)
        seen = np.zeros(len(keep), bool)
        with tarfile.open(path, mode="r|gz") as archive, \
                tqdm(total=len(keep), desc=f"cropping {folder}", unit="photo", delay=2,
                     disable=None) as bar:
            for member in archive:
                r = row.get(member.name)
                if r is None:
                    continue
                images[r] = _crop(archive.extractfile(member).read(), boxes[keep[r]],
                                  f"{where}:{member.name}")
                seen[r] = True
                bar.update()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DatasetError(f"{where}: not a readable tar.gz archive ({e})") from None
    if not seen.all():
        missing = [name for name, r in row.items() if not seen[r]]
        raise DatasetError(f"{where}: {len(missing)} photographs of {struct_name} are not in the "
                           f"archive, e.g. {missing[0]}")
    return images


def _crop(png: bytes, boxes: np.ndarray, where: str) -> np.ndarray:
    """(3*64*64,) uint8 in (C, H, W) order: the cropped, resized photograph."""
    try:
        with Image.open(io.BytesIO(png)) as image:
            image = image.convert("RGB")
            crop = image.crop(crop_box(boxes, *image.size)).resize((SIDE, SIDE),
                                                                   Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{where}: cannot crop ({e})") from None
    return np.asarray(crop).transpose(2, 0, 1).ravel()                   # (3*64*64,)


def svhn_multi_splits(files: dict) -> dict[str, np.ndarray]:
    """svhn-multi's splits from the three verified archives ({name: Original with a path})."""
    train = np.concatenate([read_archive(files[f"{folder}.tar.gz"].path,
                                         files[f"{folder}.tar.gz"].where, folder)
                            for folder in ("train", "extra")])
    if len(train) <= N_VALID:
        raise DatasetError(f"only {len(train)} photographs in train + extra; need more than "
                           f"{N_VALID} to hold out a validation set")
    chosen = np.zeros(len(train), bool)
    chosen[np.random.default_rng(VALID_SEED).choice(len(train), N_VALID, replace=False)] = True
    valid = train[chosen]                                                # (4701, 12288)
    # keep the rest by moving rows forward in place, a chunk at a time: train is 2.9 GB, and
    # train[~chosen] would need a second copy of it
    keep = np.flatnonzero(~chosen)
    for start in range(0, len(keep), 10_000):
        rows = keep[start:start + 10_000]
        train[start:start + len(rows)] = train[rows]                     # sources lie ahead
    test = files["test.tar.gz"]
    return {"train": train[:len(keep)], "valid": valid,
            "test": read_archive(test.path, test.where, "test")}
