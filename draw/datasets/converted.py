"""The converted file: one dataset's splits as a compressed NumPy archive, and `Data` in memory.

    <root>/<name>.npz   format, version, name, shape, binary: what it holds, checked on load
                        train, valid, test: (N, C*H*W) uint8, the pixel value is u8 / 255
                        train_labels, ...: (N,) uint8 class numbers, for labelled datasets

A labelled dataset converted before labels were kept (mnist before they were read) still loads,
with its labels None; `get_labelled` then asks for a new conversion.
"""
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from draw.atomic import atomic_path
from draw.datasets.errors import DatasetError
from draw.datasets.registry import DatasetSpec, Splits

FORMAT, VERSION = "draw-dataset", 1
SPLITS = ("train", "valid", "test")
N_CLASSES = 10              # every labelled dataset here holds digits 0-9


@dataclass
class Data:
    """A dataset in memory. Each split is (N, C*H*W) torch.uint8 on the CPU, the pixel value
    u8 / 255 (see `batches`); where the model sees patches (svhn-multi, draw/datasets/crops.py),
    `get_data` gives valid and test cut to them and train as a `RandomCrops`, which stands in for
    the tensor. A labelled dataset has (N,) torch.int64 class numbers, others None."""
    name: str                                   # in the registry
    shape: tuple[int, int, int]                 # (C, H, W) of one image
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    binary: bool                                # every pixel 0 or 255
    train_labels: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None


def save_converted(path: Path, spec: DatasetSpec, splits: Splits) -> None:
    """Check `splits` against `spec` and write them to `path` atomically."""
    width = int(np.prod(spec.stored_shape))
    arrays = {}
    for s in SPLITS:
        _check_split(splits.get(s), spec, width, f"converted {s} split of {spec.name}")
        arrays[s] = splits[s]
        if spec.labelled:
            _check_labels(splits.get(f"{s}_labels"), len(splits[s]),
                          f"converted {s} labels of {spec.name}")
            arrays[f"{s}_labels"] = splits[f"{s}_labels"]
    meta = {"format": np.array(FORMAT), "version": np.array(VERSION),
            "name": np.array(spec.name), "shape": np.array(spec.stored_shape),
            "binary": np.array(spec.binary)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            _write_npz(tmp, {**meta, **arrays}, f"writing {path.name}")
    except OSError as e:
        raise DatasetError(f"cannot write {path}: {e.strerror or e}") from None


class _Counted:
    """A writable file that moves a progress bar by the bytes written through it."""

    def __init__(self, out, bar: tqdm):
        self.out, self.bar = out, bar

    def write(self, data) -> int:
        self.bar.update(len(data))
        return self.out.write(data)


def _write_npz(path: Path, arrays: dict[str, np.ndarray], desc: str) -> None:
    """What np.savez_compressed writes (a zip of deflated .npy files), with a progress bar that
    counts the uncompressed bytes: compressing a large dataset takes a while."""
    total = sum(a.nbytes + 128 for a in arrays.values())     # 128: a .npy header, padded
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf, \
            tqdm(total=total, desc=desc, unit="B", unit_scale=True, delay=2,
                 disable=None) as bar:
        for key, array in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as out:
                # a non-file stream: NumPy writes the array in chunks of about 16 MB through it
                np.lib.format.write_array(_Counted(out, bar), np.asanyarray(array),
                                          allow_pickle=False)


def load_converted(path: Path, spec: DatasetSpec) -> Data:
    """Load and check a converted file written by `save_converted`."""
    fix = (f"delete it and run `python -m draw.datasets convert {spec.name}`"
           if not spec.shipped else "reinstall the package")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):      # a plain .npy array
            raise ValueError("a single array, not an archive")
        with archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as e:
        # numpy's text for random bytes advises allow_pickle=True, the one thing not to do
        raise DatasetError(f"{path}: unreadable (damaged, or another program's file); "
                           f"{fix}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DatasetError(f"{path}: unreadable ({type(e).__name__}: {e}); {fix}") from None
    if arrays.get("format", np.array("")).item() != FORMAT:
        raise DatasetError(f"{path}: not a converted dataset of this project; {fix}")
    meta = {k: arrays[k].tolist() for k in ("version", "name", "shape", "binary") if k in arrays}
    expected = {"version": VERSION, "name": spec.name, "shape": list(spec.stored_shape),
                "binary": spec.binary}
    if meta != expected:
        raise DatasetError(f"{path}: holds {meta}, expected {expected}; {fix}")
    width = int(np.prod(spec.stored_shape))
    labels = {}
    for s in SPLITS:
        _check_split(arrays.get(s), spec, width, f"{path}: {s} split", fix)
        if spec.labelled and f"{s}_labels" in arrays:
            _check_labels(arrays[f"{s}_labels"], len(arrays[s]), f"{path}: {s} labels", fix)
            labels[f"{s}_labels"] = torch.from_numpy(arrays[f"{s}_labels"].astype(np.int64))
    return Data(spec.name, spec.stored_shape, *(torch.from_numpy(arrays[s]) for s in SPLITS),
                spec.binary, **labels)


def _check_split(x, spec: DatasetSpec, width: int, what: str, fix: str = "") -> None:
    """DatasetError unless `x` is (N, width) uint8, N >= 1, and only 0/255 for binary datasets."""
    suffix = f"; {fix}" if fix else ""
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != width:
        found = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else "missing"
        raise DatasetError(f"{what} is {found}, expected uint8 (N, {width}){suffix}")
    if not len(x):
        raise DatasetError(f"{what} is empty{suffix}")
    if spec.binary and not ((x == 0) | (x == 255)).all():
        raise DatasetError(f"{what} has values other than 0 and 255 in a binary dataset{suffix}")


def _check_labels(y, n: int, what: str, fix: str = "") -> None:
    """DatasetError unless `y` is (n,) uint8 class numbers below N_CLASSES."""
    suffix = f"; {fix}" if fix else ""
    if not isinstance(y, np.ndarray) or y.dtype != np.uint8 or y.shape != (n,):
        found = f"{y.dtype} {y.shape}" if isinstance(y, np.ndarray) else "missing"
        raise DatasetError(f"{what} is {found}, expected uint8 ({n},){suffix}")
    if (y >= N_CLASSES).any():
        raise DatasetError(f"{what} has a class {int(y.max())}; expected 0-{N_CLASSES - 1}{suffix}")
