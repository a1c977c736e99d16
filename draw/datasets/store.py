"""The data directory: where converted datasets live, and how they get there.

Layout of the data directory (see `data_root`)::

    <root>/<name>.npz      a converted dataset: one compressed NumPy archive of uint8 arrays
    <root>/raw/<name>/     downloaded original files, kept so that `convert` can run again

`get_data` loads the converted file; on first use it converts the original files already in
`raw/<name>/`, or downloads them first. `convert` also reads the files the user already has
(`--from DIR`, the job `fuel-convert` did). Every write is atomic, so an interrupted download or
conversion leaves the directory as it was.
"""
import os
import sys
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from draw.atomic import atomic_path
from draw.datasets.download import DownloadError, fetch
from draw.datasets.errors import DatasetError
from draw.datasets.files import Original, locate, read_verified
from draw.datasets.registry import REGISTRY, DatasetSpec, Splits, supported_datasets

ENV_VARS = ("DRAW_DATA_PATH", "FUEL_DATA_PATH")   # FUEL_DATA_PATH: the classic repo's variable
FORMAT, VERSION = "draw-dataset", 1
SPLITS = ("train", "valid", "test")


@dataclass
class Data:
    """A dataset in memory.

    Attributes
    ----------
    name : str
        Its name in the registry.
    shape : tuple of int
        (C, H, W) of one image.
    train, valid, test : torch.Tensor
        (N, C*H*W) torch.uint8 on the CPU; the pixel value is u8 / 255 (see `batches`).
    binary : bool
        Whether every pixel is 0 or 255.
    """
    name: str
    shape: tuple[int, int, int]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    binary: bool


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data directory: `root`, else $DRAW_DATA_PATH, else $FUEL_DATA_PATH, else a cache dir.

    $FUEL_DATA_PATH may hold several directories separated by os.pathsep, as Fuel allowed; the
    first one is used. The per-user cache directory is ~/.cache/draw on Linux ($XDG_CACHE_HOME
    if set), ~/Library/Caches/draw on macOS and %LOCALAPPDATA%\\draw on Windows.
    """
    if root is not None:
        return Path(root).expanduser()
    for var in ENV_VARS:
        first = os.environ.get(var, "").split(os.pathsep)[0]
        if first:
            return Path(first).expanduser()
    if sys.platform == "win32":
        cache = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        cache = Path.home() / "Library" / "Caches"
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "draw"


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry for `name`; DatasetError listing the supported names otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise DatasetError(f"unknown dataset {name!r}; supported: "
                           f"{', '.join(supported_datasets)}") from None


def converted_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where the converted `name` lives."""
    return data_root(root) / f"{name}.npz"


def raw_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where the downloaded original files of `name` are kept."""
    return data_root(root) / "raw" / name


def get_data(name: str, root: str | os.PathLike | None = None, download: bool = True) -> Data:
    """Load a dataset, converting or downloading it on first use.

    Parameters
    ----------
    name : str
        One of `supported_datasets`.
    root : path, optional
        The data directory; see `data_root`.
    download : bool
        Whether to download the original files when they are not in the data directory.

    Raises
    ------
    DatasetError
        Unknown name, files missing (with the command that would fix it), corrupt files.
    """
    spec = dataset_spec(name)
    if not spec.files:
        with resources.as_file(resources.files("draw") / "data" / "mnist_5k.npz") as shipped:
            return load_converted(shipped, spec)
    path = converted_path(name, root)
    if not path.exists():
        if download:
            try:
                download_dataset(name, root)    # downloads only the files not already in raw/
            except DownloadError as e:
                raise DatasetError(f"{e}; or put {_file_list(spec)} in a directory DIR and run "
                                   f"`python -m draw.datasets convert {name} --from DIR`"
                                   ) from None
        elif all(locate(f, raw_dir(name, root)) for f in spec.files):
            convert(name, root=root)
        else:
            raise DatasetError(f"{name} is not in {data_root(root)}: run `python -m "
                               f"draw.datasets download {name}`, or put {_file_list(spec)} in "
                               f"a directory DIR and run `python -m draw.datasets convert "
                               f"{name} --from DIR`")
    return load_converted(path, spec)


def download_dataset(name: str, root: str | os.PathLike | None = None, *,
                     timeout: float = 60.0) -> Path:
    """Download the original files of `name` that are missing or damaged, then convert them.

    Returns
    -------
    Path
        The converted file.
    """
    spec = dataset_spec(name)
    if not spec.files:
        raise DatasetError(f"{name} ships with the package; there is nothing to download")
    path = converted_path(name, root)
    if path.exists():
        try:
            load_converted(path, spec)
            print(f"{name}: already in {path}", file=sys.stderr)
            return path
        except DatasetError as e:
            print(f"{e}; converting it again", file=sys.stderr)
    raw = raw_dir(name, root)
    for f in spec.files:
        existing = locate(f, raw)
        if existing is not None:
            try:
                read_verified(f, existing)
                continue
            except DatasetError as e:
                print(f"{e}; downloading it again", file=sys.stderr)
                existing.unlink()
        fetch(f, raw, timeout=timeout)
    return convert(name, root=root)


def convert(name: str, source: str | os.PathLike | None = None,
            root: str | os.PathLike | None = None) -> Path:
    """Verify the original files of `name` in `source` and convert them into `<root>/<name>.npz`.

    Parameters
    ----------
    name : str
        One of `supported_datasets` (not "sample").
    source : path, optional
        The directory holding the original files, each under its published name or gzipped
        with ".gz" added; by default `raw_dir(name, root)`, where downloads go.
    root : path, optional
        The data directory; see `data_root`.

    Returns
    -------
    Path
        The converted file.
    """
    spec = dataset_spec(name)
    if not spec.files:
        raise DatasetError(f"{name} ships with the package; there is nothing to convert")
    source = Path(source).expanduser() if source is not None else raw_dir(name, root)
    found = {f.name: locate(f, source) for f in spec.files}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        where = source if source.is_dir() else f"{source} (no such directory)"
        raise DatasetError(f"{name}: {', '.join(missing)} (or .gz) not found in {where}; "
                           f"expected {_file_list(spec)}")
    originals = {}
    for f in spec.files:
        print(f"{name}: verifying {found[f.name]}", file=sys.stderr)
        originals[f.name] = Original(read_verified(f, found[f.name]), str(found[f.name]))
    print(f"{name}: converting", file=sys.stderr)
    splits = spec.convert(originals)
    del originals                     # the original bytes can be larger than the arrays
    path = converted_path(name, root)
    save_converted(path, spec, splits)
    print(f"{name}: wrote {path} ({_size(path)}; "
          + ", ".join(f"{s} {len(splits[s]):,}" for s in SPLITS) + ")", file=sys.stderr)
    return path


def save_converted(path: Path, spec: DatasetSpec, splits: Splits) -> None:
    """Check `splits` against `spec` and write them to `path` atomically."""
    width = int(np.prod(spec.shape))
    for s in SPLITS:
        _check_split(splits.get(s), spec, width, f"converted {s} split of {spec.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, format=np.array(FORMAT), version=np.array(VERSION),
                                name=np.array(spec.name), shape=np.array(spec.shape),
                                binary=np.array(spec.binary), **{s: splits[s] for s in SPLITS})
    except OSError as e:
        raise DatasetError(f"cannot write {path}: {e.strerror or e}") from None


def load_converted(path: Path, spec: DatasetSpec) -> Data:
    """Load and check a converted file written by `save_converted`."""
    fix = (f"delete it and run `python -m draw.datasets convert {spec.name}`" if spec.files
           else "reinstall the package")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):      # a plain .npy array
            raise ValueError("a single array, not an archive")
        with archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DatasetError(f"{path}: unreadable ({type(e).__name__}: {e}); {fix}") from None
    if arrays.get("format", np.array("")).item() != FORMAT:
        raise DatasetError(f"{path}: not a converted dataset of this project; {fix}")
    meta = {k: arrays[k].tolist() for k in ("version", "name", "shape", "binary") if k in arrays}
    expected = {"version": VERSION, "name": spec.name, "shape": list(spec.shape),
                "binary": spec.binary}
    if meta != expected:
        raise DatasetError(f"{path}: holds {meta}, expected {expected}; {fix}")
    width = int(np.prod(spec.shape))
    for s in SPLITS:
        _check_split(arrays.get(s), spec, width, f"{path}: {s} split", fix)
    return Data(spec.name, spec.shape, *(torch.from_numpy(arrays[s]) for s in SPLITS),
                spec.binary)


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


def status(root: str | os.PathLike | None = None) -> list[dict]:
    """One row per dataset for `python -m draw.datasets list`: name, state, path, size."""
    rows = []
    for name, spec in REGISTRY.items():
        if not spec.files:
            path = Path(str(resources.files("draw") / "data" / "mnist_5k.npz"))
            state = "shipped"
        else:
            path = converted_path(name, root)
            raw = raw_dir(name, root)
            if path.exists():
                state = "converted"
            elif raw.is_dir() and any(raw.iterdir()):
                state, path = "downloaded, not converted", raw
            else:
                state = "missing"
        rows.append({"name": name, "state": state, "path": path,
                     "size": _size(path) if state != "missing" else "-",
                     "shape": "x".join(map(str, spec.shape)), "splits": spec.splits})
    return rows


def _file_list(spec: DatasetSpec) -> str:
    return ", ".join(f.name for f in spec.files)


def _size(path: Path) -> str:
    """A human-readable size of a file, or of the files in a directory."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    size = float(sum(p.stat().st_size for p in files))
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
