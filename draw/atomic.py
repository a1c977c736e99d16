"""Atomic file writes: a file is either its previous complete version or its new complete one.

The new bytes go to a temporary file in the same directory, renamed over the target (atomic on
POSIX and Windows) once on disk, so a crash, a kill or a full disk leaves the previous file.
"""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path to write to; on success it replaces `path`, on error it vanishes:

        with atomic_path("model.pkl") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:        # a missing or read-only folder: name the file asked for
        raise OSError(e.errno, e.strerror, os.fspath(path)) from None
    os.close(fd)
    # mkstemp makes the file private (0600); give it open()'s permissions, as the umask intends
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # BaseException: Ctrl-C (KeyboardInterrupt) mid-write must not leave a stray temp file
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
