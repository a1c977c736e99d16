"""The data directory: where converted datasets live, and how they get there.

Layout of the data directory (see `data_root`)::

    <root>/<name>.npz      a converted dataset: one compressed NumPy archive of uint8 arrays
    <root>/raw/<name>/     downloaded original files, kept so that `convert` can run again

A dataset made from another (`DatasetSpec.base`: two-digit-mnist and cluttered-mnist from mnist)
has no files of its own: its download and convert fetch and convert the base, then compose it
(two-digit-mnist is stored; cluttered-mnist is composed per batch, see draw/datasets/labelled.py).

`get_data` loads the converted file (svhn-multi's as the 54x54 patches its model sees:
`as_seen`); on first use it converts the original files already in `raw/<name>/`, or downloads
them first. `convert` also reads the files the user already has (`--from DIR`, the job
`fuel-convert` did). Every write is atomic, so an interrupted download or conversion leaves the
directory as it was.
"""
import dataclasses
import os
import sys
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from draw.datasets.converted import SPLITS, Data, load_converted, save_converted
from draw.datasets.crops import RandomCrops, centre_crops
from draw.datasets.download import DownloadError, fetch
from draw.datasets.errors import DatasetError
from draw.datasets.files import Original, locate, read_verified
from draw.datasets.registry import REGISTRY, DatasetSpec

ENV_VARS = ("DRAW_DATA_PATH", "FUEL_DATA_PATH")   # FUEL_DATA_PATH: the classic repo's variable
__all__ = ["Data", "as_seen", "convert", "converted_path", "data_root", "dataset_spec",
           "download_dataset", "get_data", "load_converted", "raw_dir", "save_converted",
           "status"]


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
                           f"{', '.join(REGISTRY)}") from None


def converted_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where the converted `name` lives."""
    return data_root(root) / f"{name}.npz"


def raw_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where the downloaded original files of `name` are kept."""
    return data_root(root) / "raw" / name


def get_data(name: str, root: str | os.PathLike | None = None, download: bool = True,
             seed: int = 0) -> Data:
    """Load one of `supported_datasets` as the model sees it, converting or downloading it on
    first use (`download`: the original files, when they are not in the data directory `root`,
    see `data_root`). `seed` fixes svhn-multi's training patches with the epoch (`as_seen`).

    DatasetError for an unknown name, corrupt files or missing ones (one line: the accepted file
    names and the commands that would fix it).
    """
    spec = dataset_spec(name)
    if spec.on_the_fly:
        raise DatasetError(f"{name} is composed batch by batch for classification and has no "
                           "fixed images to load: use draw.datasets.get_labelled (as "
                           "train-classifier.py does)")
    if spec.shipped:
        with resources.as_file(resources.files("draw") / "data" / "mnist_5k.npz") as shipped:
            return load_converted(shipped, spec)
    path = converted_path(name, root)
    if not path.exists():
        if download:
            download_dataset(name, root)        # downloads only the files not already in raw/
        elif spec.base is not None and converted_path(spec.base, root).exists():
            _derive(spec, root)
        elif all(locate(f, raw_dir(_owner(spec).name, root)) for f in _owner(spec).files):
            convert(name, root=root)
        else:
            made = f" (made from {spec.base})" if spec.base is not None else ""
            raise DatasetError(f"{name}{made} is not in {data_root(root)}: run `python -m "
                               f"draw.datasets download {name}`, or {_convert_hint(spec)}")
    return as_seen(load_converted(path, spec), spec, seed)


def as_seen(data: Data, spec: DatasetSpec, seed: int) -> Data:
    """The stored `data` as the model sees them: unchanged, or for a dataset of patches
    (`spec.crop_of`, svhn-multi) the train split as a `RandomCrops` of `seed` and valid and
    test cut to their centre patches (draw/datasets/crops.py)."""
    if spec.crop_of is None:
        return data
    size = spec.shape[1:]
    return dataclasses.replace(
        data, shape=spec.shape, train=RandomCrops(data.train, spec.crop_of, size, seed),
        valid=centre_crops(data.valid, spec.crop_of, size),
        test=centre_crops(data.test, spec.crop_of, size))


def download_dataset(name: str, root: str | os.PathLike | None = None, *,
                     timeout: float = 5.0) -> Path:
    """Download the original files of `name` that are missing or damaged, then convert them;
    return the converted file (for cluttered-mnist, which is never stored: mnist's).

    A dataset made from another (`spec.base`) downloads that one's files. A failed download
    keeps the files that did arrive complete and verified, and removes any directory it made
    that is left empty. `timeout`: seconds to wait for a server before the next mirror (`fetch`).
    """
    spec = dataset_spec(name)
    if spec.shipped:
        raise DatasetError(f"{name} ships with the package; there is nothing to download")
    path = converted_path(name, root)
    if path.exists() and not spec.on_the_fly:
        try:
            load_converted(path, spec)
            print(f"{name}: already in {path}", file=sys.stderr)
            return path
        except DatasetError as e:
            print(f"{e}; converting it again", file=sys.stderr)
    if spec.base is None:
        _fetch_originals(spec, root, timeout, spec)
        return convert(name, root=root)
    base_path = converted_path(spec.base, root)
    if not base_path.exists():
        _fetch_originals(_owner(spec), root, timeout, spec)
        convert(spec.base, root=root)
    return base_path if spec.on_the_fly else _derive(spec, root)


def _fetch_originals(owner: DatasetSpec, root: str | os.PathLike | None, timeout: float,
                     wanted: DatasetSpec) -> None:
    """Download `owner`'s missing or damaged files into its raw directory, for `wanted`."""
    raw = raw_dir(owner.name, root)
    with _no_empty_directories_left(raw):
        for f in owner.files:
            existing = locate(f, raw)
            if existing is not None:
                try:
                    read_verified(f, existing)
                    continue
                except DatasetError as e:
                    print(f"{e}; downloading it again", file=sys.stderr)
                    existing.unlink()
            try:
                fetch(f, raw, timeout=timeout)
            except DownloadError as e:
                raise DownloadError(f"{e}; or {_convert_hint(wanted)}") from None


def convert(name: str, source: str | os.PathLike | None = None,
            root: str | os.PathLike | None = None) -> Path:
    """Verify the original files of `name` in `source` and convert them into `<root>/<name>.npz`;
    return that file, as `download_dataset` does.

    `source` holds the original files, each under its published name or gzipped with ".gz"
    added; by default `raw_dir(name, root)`, where downloads go. A dataset made from another
    (two-digit-mnist, cluttered-mnist) reads that one's files (mnist's), and uses its converted
    file when there is one and no `source` is given.
    """
    spec = dataset_spec(name)
    if spec.shipped:
        raise DatasetError(f"{name} ships with the package; there is nothing to convert")
    if spec.base is not None:
        base_path = converted_path(spec.base, root)
        if source is not None or not base_path.exists():
            try:
                base_path = convert(spec.base, source, root)
            except DatasetError as e:
                raise DatasetError(f"{name} is made from {spec.base}: {e}") from None
        if spec.on_the_fly:
            print(f"{name}: composed from {base_path} while training; nothing more to convert",
                  file=sys.stderr)
            return base_path
        return _derive(spec, root)
    source = Path(source).expanduser() if source is not None else raw_dir(name, root)
    found = {f.name: locate(f, source) for f in spec.files}
    missing = [_accepted(f) for f in spec.files if found[f.name] is None]
    if missing:
        where = (source if source.is_dir() else
                 f"{source} (a file: --from takes the folder that holds the files)"
                 if source.exists() else f"{source} (no such directory)")
        raise DatasetError(f"{name}: {', '.join(missing)}: not found in {where}")
    originals = {}
    for f in spec.files:
        print(f"{name}: verifying {found[f.name]}", file=sys.stderr)
        originals[f.name] = Original(read_verified(f, found[f.name]), str(found[f.name]),
                                     found[f.name])
    print(f"{name}: converting", file=sys.stderr)
    splits = spec.convert(originals)
    del originals                     # the original bytes can be larger than the arrays
    return _save(spec, splits, root)


def _derive(spec: DatasetSpec, root: str | os.PathLike | None) -> Path:
    """Make a stored dataset from its base's converted data (two-digit-mnist from mnist)."""
    base = get_data(spec.base, root, download=False)
    print(f"{spec.name}: composing from {converted_path(spec.base, root)}", file=sys.stderr)
    return _save(spec, spec.derive(base), root)


def _save(spec: DatasetSpec, splits: dict, root: str | os.PathLike | None) -> Path:
    path = converted_path(spec.name, root)
    print(f"{spec.name}: writing {path}", file=sys.stderr)
    save_converted(path, spec, splits)
    print(f"{spec.name}: wrote {path} ({_size(path)}; "
          + ", ".join(f"{s} {len(splits[s]):,}" for s in SPLITS) + ")", file=sys.stderr)
    return path


@contextmanager
def _no_empty_directories_left(directory: Path):
    """Remove `directory` and the parents this block created, if an error leaves them empty."""
    created = []
    for d in (directory, *directory.parents):
        if d.exists():
            break
        created.append(d)
    try:
        yield
    except BaseException:
        for d in created:                       # deepest first
            try:
                d.rmdir()                       # only if empty: complete files are kept
            except OSError:
                break
        raise


def status(root: str | os.PathLike | None = None) -> list[dict]:
    """One row per dataset for `python -m draw.datasets list`: name, state, path, size."""
    rows = []
    for name, spec in REGISTRY.items():
        raw = raw_dir(_owner(spec).name, root)
        if spec.shipped:
            path = Path(str(resources.files("draw") / "data" / "mnist_5k.npz"))
            state = "shipped"
        elif spec.on_the_fly:
            path = converted_path(spec.base, root)
            state = f"composed from {spec.base}" if path.exists() else "missing"
        elif (path := converted_path(name, root)).exists():
            state = "converted"
        elif raw.is_dir() and any(raw.iterdir()):
            state, path = "downloaded, not converted", raw
        else:
            state = "missing"
        size = _size(path) if state not in ("missing",) and not spec.on_the_fly else "-"
        rows.append({"name": name, "state": state, "path": path, "size": size,
                     "shape": "x".join(map(str, spec.shape)) + (
                         f" of {spec.crop_of[1]}x{spec.crop_of[2]}" if spec.crop_of else ""),
                     "splits": spec.splits})
    return rows


def _owner(spec: DatasetSpec) -> DatasetSpec:
    """The dataset whose original files `spec` is made from: its base, or itself."""
    return REGISTRY[spec.base] if spec.base is not None else spec


def _accepted(f) -> str:
    """How a file may be given: under its published name, or gzipped unless it already is."""
    return f.name if f.name.endswith(".gz") else f"{f.name} or {f.name}.gz"


def _convert_hint(spec: DatasetSpec) -> str:
    """The way to convert files the user already has, naming every accepted file form."""
    files = ", ".join(_accepted(f) for f in _owner(spec).files)
    return (f"put {files} in a directory DIR and run `python -m draw.datasets convert "
            f"{spec.name} --from DIR`")


def _size(path: Path) -> str:
    """A human-readable size of a file, or of the files in a directory."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    size = float(sum(p.stat().st_size for p in files))
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
