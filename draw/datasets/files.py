"""A dataset's original files: what each one is, where a copy of it is, and whether it is intact.

A file is known by its published name and the checksum of its published bytes. A copy of it
counts when it is found under that name, or gzipped under the name plus ".gz" (mirrors and
users often keep the MNIST-style files gzipped), and its bytes, decompressed when gzipped, match
the checksum. The checksum is of the decompressed bytes on purpose: gzip wrappers differ between
mirrors and copies (header time stamps, compression levels), the data does not.

A copy whose checksum does not match is read by its format's parser (`FileSpec.check`) before it
is refused, so that a damaged file is reported with the line and value at fault where the parser
finds one, not only as a checksum mismatch.
"""
import gzip
import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from draw.datasets.errors import DatasetError


@dataclass(frozen=True)
class FileSpec:
    """One original file of a dataset. A URL's last path component must be `name` or
    `name + ".gz"` (a gzipped copy, verified after decompression)."""
    name: str                                   # as published, e.g. "train-images-idx3-ubyte"
    # "sha256:<hex>" of the published bytes; "md5:<hex>" or "adler32:<decimal>" where only those
    # have been published (see the registry). Adler-32 catches damage, not tampering.
    checksum: str
    urls: tuple[str, ...] = ()                  # canonical first, then mirrors
    # check(data, where) parses the bytes and raises DatasetError naming the line or value at
    # fault; run on a copy whose checksum does not match, to say what is wrong
    check: Callable[[bytes, str], object] | None = field(default=None, compare=False)
    # too large to read into memory (SVHN's 1.9 GB extra.tar.gz): verified as a stream, and
    # converted from its path
    large: bool = False

    def __post_init__(self):
        algorithm, _, digest = self.checksum.partition(":")
        if algorithm not in ("sha256", "md5", "adler32") or not digest:
            raise ValueError(f"FileSpec {self.name}: checksum must be 'sha256:<hex>', "
                             f"'md5:<hex>' or 'adler32:<decimal>', got {self.checksum!r}")

    def stored_as(self, url: str) -> str:
        """The file name a download from `url` is kept under: `name` or `name + '.gz'`."""
        base = url.rstrip("/").rsplit("/", 1)[-1]
        if base not in (self.name, self.name + ".gz"):
            raise ValueError(f"FileSpec {self.name}: URL {url} names {base}, expected "
                             f"{self.name} or {self.name}.gz")
        return base


@dataclass(frozen=True)
class Original:
    """A verified original file: its published bytes (empty for a large file, read from `path`
    by its converter), and its path, for error messages."""
    data: bytes
    where: str
    path: Path | None = None


def locate(spec: FileSpec, directory: Path) -> Path | None:
    """The copy of `spec` in `directory` (the file itself preferred to a gzipped one), or None."""
    for candidate in (directory / spec.name, directory / (spec.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def read_verified(spec: FileSpec, path: Path, gzipped: bool | None = None) -> bytes:
    """Read `path`, decompress it if it is a gzipped copy, check the published checksum and
    return the published bytes; DatasetError for an unreadable file, a truncated or corrupt gzip,
    or a checksum mismatch. `gzipped` by default: whether the name is `spec.name + ".gz"` (a
    download in progress has a temporary name and says so explicitly)."""
    if gzipped is None:
        gzipped = path.name == spec.name + ".gz"
    if spec.large and not gzipped:
        _verify_stream(spec, path)
        return b""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}") from None
    if gzipped:
        try:
            data = gzip.decompress(data)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise DatasetError(f"{path}: truncated or corrupt gzip file ({e}); download or "
                               "copy it again") from None
    algorithm, _, expected = spec.checksum.partition(":")
    actual = _digest(algorithm, [data])
    if actual != expected.lower():
        content = "decompressed content" if gzipped else "content"
        mismatch = (f"{algorithm} of its {content} is {actual}, expected {expected} for "
                    f"{spec.name}")
        if spec.check is not None:
            try:
                spec.check(data, str(path))
            except DatasetError as e:
                raise DatasetError(f"{e} (a damaged file: {mismatch})") from None
        raise DatasetError(f"{path}: {mismatch} (a different or damaged file)")
    return data


def _digest(algorithm: str, chunks) -> str:
    """The checksum of the bytes in `chunks`: hex for sha256 and md5, decimal for adler32."""
    if algorithm == "adler32":
        value = 1
        for chunk in chunks:
            value = zlib.adler32(chunk, value)
        return str(value)
    h = hashlib.new(algorithm)
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _verify_stream(spec: FileSpec, path: Path) -> None:
    """Check a large file's checksum reading it in chunks, with a progress bar past 2 s."""
    algorithm, _, expected = spec.checksum.partition(":")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, delay=2,
                                         desc=f"verifying {path.name}", disable=None) as bar:
            def chunks():
                while chunk := f.read(1 << 24):
                    bar.update(len(chunk))
                    yield chunk
            actual = _digest(algorithm, chunks())
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}") from None
    if actual != expected.lower():
        raise DatasetError(f"{path}: {algorithm} of its content is {actual}, expected {expected} "
                           f"for {spec.name} (a different, damaged or incomplete file)")
