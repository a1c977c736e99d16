"""Readers for the datasets' original file formats: complete file bytes in, uint8 arrays out.

Each reader takes the bytes of one file (already checked against its published checksum by
`draw.datasets.files`) and `where`, the file's path for messages. Bytes that are not the expected
format raise DatasetError with one line naming the file and what was expected.

Formats
-------
amat    Larochelle's text format (binarized MNIST): one image a line, 0/1 values between spaces.
IDX     LeCun's MNIST format: a big-endian header, then raw uint8 pixels (images, magic 0x803)
        or raw uint8 class labels 0-9 (labels, magic 0x801).
MATLAB  v5 .mat files (SVHN format 2, Caltech-101 Silhouettes), read by scipy.io.loadmat.
CIFAR   pickled dicts in a tar.gz, read by an unpickler that can build NumPy arrays and nothing
        else, so a tampered pickle cannot run code.
"""
import codecs
import io
import pickle
import struct
import tarfile
import zlib

import numpy as np
import scipy.io

from draw.datasets.errors import DatasetError

_NEWLINE, _ZERO, _ONE = ord("\n"), ord("0"), ord("1")
_AMAT_ALLOWED = np.zeros(256, dtype=bool)
_AMAT_ALLOWED[list(b"01 \t\r\n")] = True


def _line_of(text: np.ndarray, position: int) -> int:
    """1-based line number of byte `position` in `text`, for error messages."""
    return int(np.count_nonzero(text[:position] == _NEWLINE)) + 1


def parse_amat(data: bytes, where: str, width: int) -> np.ndarray:
    """Parse an amat file of binary images, `width` (C*H*W) values a line: (N, width) uint8 of
    0 and 1. Vectorised: the train file is 78 MB of text, too much for a loop per value."""
    text = np.frombuffer(data, dtype=np.uint8)                           # (n_bytes,)
    # Fast path for the published layout, "v v ... v\n": 2 bytes a value, values on even bytes.
    if len(text) and len(text) % (2 * width) == 0:
        grid = text.reshape(-1, 2 * width)                               # (N, 2*width)
        values, gaps = grid[:, 0::2], grid[:, 1::2]                      # (N, width) each
        if ((gaps[:, :-1] == ord(" ")).all() and (gaps[:, -1] == _NEWLINE).all()
                and ((values == _ZERO) | (values == _ONE)).all()):
            return values - np.uint8(_ZERO)
    # Any other layout (tabs, CRLF, several spaces, errors): the general parser below.
    bad = np.flatnonzero(~_AMAT_ALLOWED[text])
    if bad.size:
        char = bytes(text[bad[0]:bad[0] + 1]).decode("latin-1")
        raise DatasetError(f"{where}, line {_line_of(text, bad[0])}: found {char!r}; expected "
                           "only 0/1 values separated by spaces")
    is_value = (text == _ZERO) | (text == _ONE)                          # (n_bytes,)
    glued = np.flatnonzero(is_value[1:] & is_value[:-1])
    if glued.size:
        raise DatasetError(f"{where}, line {_line_of(text, glued[0])}: found a multi-digit "
                           "number; expected only 0/1 values separated by spaces")
    # Keep digits and newlines: well-formed, that is `width` digits then "\n" on every line, so
    # the compacted text reshapes into (N, width + 1) with newlines in the last column.
    compact = text[is_value | (text == _NEWLINE)]                        # (n_kept,)
    end = len(compact)
    while end and compact[end - 1] == _NEWLINE:                          # trailing blank lines
        end -= 1
    compact = np.append(compact[:end], np.uint8(_NEWLINE)) if end else compact[:0]
    newlines = np.flatnonzero(compact == _NEWLINE)                       # (N,)
    expected = np.arange(1, len(newlines) + 1) * (width + 1) - 1
    wrong = np.flatnonzero(newlines != expected)
    if wrong.size:
        line = int(wrong[0])
        count = int(newlines[line] - (newlines[line - 1] if line else -1) - 1)
        raise DatasetError(f"{where}, line {line + 1}: {count} values; expected {width}")
    if not len(newlines):
        raise DatasetError(f"{where}: no images; expected lines of {width} values 0/1")
    return compact.reshape(len(newlines), width + 1)[:, :width] - np.uint8(_ZERO)


def parse_idx_images(data: bytes, where: str) -> np.ndarray:
    """Parse an IDX image file (magic 0x00000803: unsigned bytes, 3 dimensions): (N, H, W)
    uint8, read-only (a view of `data`)."""
    if len(data) < 16 or data[:4] != b"\x00\x00\x08\x03":
        raise DatasetError(f"{where}: not an IDX image file (starts {data[:4].hex() or 'empty'}"
                           ", expected 00000803: unsigned bytes, 3 dimensions)")
    n, height, width = struct.unpack(">III", data[4:16])
    expected = 16 + n * height * width
    if len(data) != expected:
        raise DatasetError(f"{where}: {len(data)} bytes; expected {expected} for {n} images of "
                           f"{height}x{width} (truncated or padded file)")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, height, width)


def parse_idx_labels(data: bytes, where: str) -> np.ndarray:
    """Parse an IDX label file (magic 0x00000801: unsigned bytes, 1 dimension) of digits 0-9:
    (N,) uint8, read-only (a view of `data`)."""
    if len(data) < 8 or data[:4] != b"\x00\x00\x08\x01":
        raise DatasetError(f"{where}: not an IDX label file (starts {data[:4].hex() or 'empty'}"
                           ", expected 00000801: unsigned bytes, 1 dimension)")
    (n,) = struct.unpack(">I", data[4:8])
    if len(data) != 8 + n:
        raise DatasetError(f"{where}: {len(data)} bytes; expected {8 + n} for {n} labels "
                           "(truncated or padded file)")
    labels = np.frombuffer(data, dtype=np.uint8, offset=8)               # (N,)
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DatasetError(f"{where}: label {int(bad[0])} is {int(labels[bad[0]])}; expected "
                           "a digit 0-9")
    return labels


def load_mat(data: bytes, where: str, names: list[str]) -> dict[str, np.ndarray]:
    """Read the variables `names` from a MATLAB v5 file."""
    try:
        mat = scipy.io.loadmat(io.BytesIO(data), variable_names=names)
    except NotImplementedError:
        raise DatasetError(f"{where}: a MATLAB v7.3 (HDF5) file; expected the published "
                           "MATLAB v5 file") from None
    except Exception as e:
        # scipy raises a dozen different types for corrupt files (ValueError, TypeError,
        # struct.error, zlib.error, MatReadError, ...); all of them mean "not this format".
        raise DatasetError(f"{where}: not a readable MATLAB file ({type(e).__name__}: {e})"
                           ) from None
    missing = [name for name in names if name not in mat]
    if missing:
        raise DatasetError(f"{where}: has no variable {', '.join(missing)}; expected "
                           f"{', '.join(names)}")
    return {name: mat[name] for name in names}


# The only globals a CIFAR-10 pickle needs: NumPy's array reconstructor (under its NumPy 1 and
# NumPy 2 module names), ndarray and dtype, and codecs.encode, which Python 3's protocol 2 uses
# for bytes. None of them can run code the pickle chooses.
_reconstruct = np.empty(0).__reduce__()[0]
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build dicts, lists, strings, numbers and NumPy arrays only."""

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_cifar_batch(data: bytes, where: str) -> np.ndarray:
    """Read one CIFAR-10 python batch (a pickled dict with 'data'): (N, 3*32*32) uint8, 1024
    red, 1024 green, then 1024 blue values, already the (C, H, W) flattening used here."""
    try:
        # latin1 is how Python 2 pickles of NumPy arrays (the published files) must be read
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:
        raise DatasetError(f"{where}: not a CIFAR-10 python batch ({type(e).__name__}: {e})"
                           ) from None
    images = batch.get("data") if isinstance(batch, dict) else None
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2
            or images.shape[1] != 3 * 32 * 32):
        found = (f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray)
                 else type(images).__name__)
        raise DatasetError(f"{where}: 'data' is {found}; expected a uint8 array (N, 3072)")
    return images


def read_cifar_archive(data: bytes, where: str, members: list[str]) -> list[np.ndarray]:
    """Read the CIFAR-10 batches `members` from the published tar.gz, without extracting it:
    one (N_i, 3072) uint8 array per member, in the order given."""
    arrays = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            for member in members:
                f = archive.extractfile(member)
                if f is None:
                    raise DatasetError(f"{where}: {member} is not a regular file")
                arrays.append(read_cifar_batch(f.read(), f"{where}:{member}"))
    except KeyError:
        raise DatasetError(f"{where}: has no {member}; expected the CIFAR-10 python release "
                           "(cifar-10-python.tar.gz)") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DatasetError(f"{where}: not a readable tar archive ({e})") from None
    return arrays
