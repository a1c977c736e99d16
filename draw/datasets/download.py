"""Download one original file over HTTP(S), trying mirrors in order, with a progress bar.

A download goes to a temporary file beside its destination and is renamed into place only after
the whole body has arrived and its checksum matches (`draw.atomic.atomic_path`). A cut
connection, a wrong file from a mirror, a full disk or Ctrl-C therefore leaves nothing behind
that could later count as present.

Timeouts: `timeout` bounds each wait for the network (the connection, the response headers, every
read of the body), so a host that accepts connections and never answers costs `timeout` seconds
per mirror: 5 s by default, 15 s for MNIST's three mirrors, before the one-line error. A slow
but live download is not cut, since every chunk that arrives restarts the wait. (Name lookups
are the system resolver's and not bounded by it.)
"""
import http.client
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from draw.atomic import atomic_path
from draw.datasets.errors import DatasetError
from draw.datasets.files import FileSpec, read_verified

_CHUNK = 1 << 20
# Some hosts refuse urllib's default User-Agent.
_HEADERS = {"User-Agent": "draw-datasets/0.1 (+https://arxiv.org/abs/1502.04623)"}
# What a dead host, a refused or cut connection, an HTTP error or a timeout raise. OSError covers
# ConnectionError, TimeoutError and socket errors; disk errors are caught separately, first.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError, ValueError)


class DownloadError(DatasetError):
    """No URL of a file gave it: the network, the hosts or the mirrors' files are at fault."""


class _MirrorFailed(Exception):
    """This URL did not give the file; the next one may."""


def fetch(spec: FileSpec, directory: Path, *, timeout: float = 5.0) -> Path:
    """Download `spec` into `directory` (created if needed), under `spec.stored_as(url)`, from
    the first of its URLs that gives the right bytes; return the verified file. `timeout`:
    seconds to wait for a connection, the response or the next bytes before the next URL.

    DownloadError when no URL gave the file (one line listing each URL and why); DatasetError
    when the file cannot be written.
    """
    if not spec.urls:
        raise DownloadError(f"{spec.name} has no download URL")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cannot create {directory}: {e.strerror}") from None
    failures = []
    for url in spec.urls:
        target = directory / spec.stored_as(url)
        try:
            with atomic_path(target) as tmp:
                _download(url, tmp, timeout)
                try:
                    read_verified(spec, tmp, gzipped=target.name != spec.name)
                except DatasetError as e:
                    raise _MirrorFailed(str(e).replace(str(tmp), "the download")) from None
            return target
        except _MirrorFailed as e:
            failures.append(f"{url}: {e}")      # said once, in the error, not line by line
    raise DownloadError(f"could not download {spec.name}: " + "; ".join(failures))


def _download(url: str, tmp: Path, timeout: float) -> None:
    """Stream `url` into `tmp`; _MirrorFailed on any network problem or a short body."""
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=_HEADERS),
                                          timeout=timeout)
    except _NETWORK_ERRORS as e:
        raise _MirrorFailed(_reason(e)) from None
    try:
        with response, open(tmp, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=url.rsplit("/", 1)[-1], file=sys.stderr, disable=None) as bar:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except _NETWORK_ERRORS as e:
                        raise _MirrorFailed(f"connection lost after {received} bytes "
                                            f"({_reason(e)})") from None
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except OSError as e:
        # reading errors became _MirrorFailed above, so this is the disk: full, quota, read-only
        raise DatasetError(f"cannot write {tmp.parent}: {e.strerror or e}") from None
    if total is not None and received != total:
        raise _MirrorFailed(f"connection closed after {received} of {total} bytes")


def _reason(e: BaseException) -> str:
    """A short, one-line description of a network error."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return str(e) or type(e).__name__
