"""The downloader against a real HTTP server on 127.0.0.1, started here in a thread.

Success, a wrong file (checksum mismatch), a connection cut mid-file, a dead mirror followed by
a good one, a dead network (a socket that accepts and never answers), and `python -m
draw.datasets download` end to end on a small MNIST-format dataset.
"""
import dataclasses
import gzip
import hashlib
import inspect
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from draw.datasets import DatasetError, get_data
from draw.datasets.__main__ import main
from draw.datasets.download import fetch
from draw.datasets.files import FileSpec
from draw.datasets.store import download_dataset
from draw.datasets.registry import REGISTRY


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.routes`: path -> (body, mode), mode "ok" or "cut" (half, then hang up)."""

    def do_GET(self):
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        body, mode = route
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # HTTP/1.0: the server closes the connection when this returns, so "cut" ends the
        # body early with the full Content-Length announced
        self.wfile.write(body if mode == "ok" else body[:len(body) // 2])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes = {}
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_port}{path}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


BODY = bytes(range(256)) * 4096                     # 1 MiB, several read chunks' worth
SHA = f"sha256:{hashlib.sha256(BODY).hexdigest()}"


def test_success(server, tmp_path):
    server.routes["/d/f.bin"] = (BODY, "ok")
    path = fetch(FileSpec("f.bin", SHA, (server.url("/d/f.bin"),)), tmp_path / "raw")
    assert path == tmp_path / "raw" / "f.bin" and path.read_bytes() == BODY
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]


def test_gzipped_download_is_verified_after_decompression(server, tmp_path):
    server.routes["/f.bin.gz"] = (gzip.compress(BODY), "ok")
    path = fetch(FileSpec("f.bin", SHA, (server.url("/f.bin.gz"),)), tmp_path)
    assert path.name == "f.bin.gz" and gzip.decompress(path.read_bytes()) == BODY


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    server.routes["/f.bin"] = (BODY[:-1] + b"!", "ok")
    with pytest.raises(DatasetError, match=r"could not download f.bin: http://127.0.0.1:\d+/f.bin"
                                           r": the download: sha256 of its content is"):
        fetch(FileSpec("f.bin", SHA, (server.url("/f.bin"),)), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_connection_cut_mid_file_keeps_nothing(server, tmp_path):
    server.routes["/f.bin"] = (BODY, "cut")
    with pytest.raises(DatasetError, match="could not download f.bin: .*(connection closed after "
                                           "524288 of 1048576 bytes|connection lost)"):
        fetch(FileSpec("f.bin", SHA, (server.url("/f.bin"),)), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cut_gzipped_download_keeps_nothing(server, tmp_path):
    server.routes["/f.bin.gz"] = (gzip.compress(BODY), "cut")
    with pytest.raises(DatasetError, match="could not download f.bin"):
        fetch(FileSpec("f.bin", SHA, (server.url("/f.bin.gz"),)), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_dead_mirrors_then_a_good_one(server, tmp_path, capsys):
    server.routes["/cut/f.bin"] = (BODY, "cut")
    server.routes["/good/f.bin"] = (BODY, "ok")
    urls = (server.url("/missing/f.bin"), server.url("/cut/f.bin"), server.url("/good/f.bin"))
    path = fetch(FileSpec("f.bin", SHA, urls), tmp_path)
    assert path.read_bytes() == BODY and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_no_server_listening(tmp_path):
    # a port that was just free: nothing listens there, so the connection is refused
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = httpd.server_port
    httpd.server_close()
    with pytest.raises(DatasetError, match=f"could not download f.bin: http://127.0.0.1:{port}/"
                                           "f.bin: .*refused"):
        fetch(FileSpec("f.bin", SHA, (f"http://127.0.0.1:{port}/f.bin",)), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def dead_host():
    """A port on 127.0.0.1 that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_a_dead_network_fails_within_20_seconds(dead_host, tmp_path, monkeypatch):
    """Issue 15: every mirror is tried in turn, each for the default timeout, then one line."""
    default = inspect.signature(download_dataset).parameters["timeout"].default
    assert default == inspect.signature(fetch).parameters["timeout"].default
    most_mirrors = max(len(f.urls) for spec in REGISTRY.values() for f in spec.files)
    assert most_mirrors * default <= 20                # mnist's three mirrors: 15 s at most
    urls = tuple(f"{dead_host}/{m}/f.bin" for m in ("one", "two"))
    monkeypatch.setitem(REGISTRY, "bmnist", dataclasses.replace(
        REGISTRY["bmnist"], files=(FileSpec("f.bin", SHA, urls),)))
    start = time.monotonic()
    with pytest.raises(DatasetError) as e:
        get_data("bmnist", root=tmp_path / "data")
    elapsed = time.monotonic() - start
    assert 2 * default - 0.5 < elapsed < 2 * default + 5          # both mirrors, then gave up
    message = str(e.value)
    assert "\n" not in message and message.count("timed out") == 2
    assert message.index("/one/f.bin") < message.index("/two/f.bin")
    assert not (tmp_path / "data").exists()                         # no empty raw/ folders


# ---------------------------------------------------------------- download NAME, end to end

def _idx(images: np.ndarray) -> bytes:
    return b"\x00\x00\x08\x03" + struct.pack(">III", *images.shape) + images.tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return b"\x00\x00\x08\x01" + struct.pack(">I", len(labels)) + labels.tobytes()


@pytest.fixture
def small_mnist(server, monkeypatch):
    """Register a small MNIST-format "mnist" whose files the server has, gzipped."""
    rng = np.random.default_rng(0)
    images = {"train-images-idx3-ubyte": rng.integers(0, 256, (10_002, 28, 28), dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)}
    labels = {"train-labels-idx1-ubyte": rng.integers(0, 10, 10_002, dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 5, dtype=np.uint8)}
    contents = {**{k: _idx(x) for k, x in images.items()},
                **{k: _idx_labels(y) for k, y in labels.items()}}
    files = []
    for name, data in contents.items():
        server.routes[f"/mnist/{name}.gz"] = (gzip.compress(data, compresslevel=1), "ok")
        files.append(FileSpec(name, f"sha256:{hashlib.sha256(data).hexdigest()}",
                              (server.url(f"/dead/{name}.gz"), server.url(f"/mnist/{name}.gz"))))
    images.update(labels)
    monkeypatch.setitem(REGISTRY, "mnist",
                        dataclasses.replace(REGISTRY["mnist"], files=tuple(files)))
    return images


def test_download_command_end_to_end(small_mnist, tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["download", "mnist", "--root", str(root)]) == 0
    assert sorted(p.name for p in (root / "raw" / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz"]
    data = get_data("mnist", root=root, download=False)
    train = small_mnist["train-images-idx3-ubyte"].reshape(-1, 784)
    assert np.array_equal(data.train.numpy(), train[:2])
    assert np.array_equal(data.valid.numpy(), train[2:])
    assert np.array_equal(data.test.numpy(), small_mnist["t10k-images-idx3-ubyte"].reshape(5, 784))
    train_labels = small_mnist["train-labels-idx1-ubyte"]
    assert np.array_equal(data.train_labels.numpy(), train_labels[:2])
    assert np.array_equal(data.valid_labels.numpy(), train_labels[2:])
    assert np.array_equal(data.test_labels.numpy(), small_mnist["t10k-labels-idx1-ubyte"])
    capsys.readouterr()

    assert main(["download", "mnist", "--root", str(root)]) == 0
    assert "mnist: already in" in capsys.readouterr().err

    # a damaged converted file and a damaged raw file are both made again
    (root / "mnist.npz").write_bytes(b"junk")
    raw = root / "raw" / "mnist" / "t10k-images-idx3-ubyte.gz"
    raw.write_bytes(raw.read_bytes()[:50])
    assert main(["download", "mnist", "--root", str(root)]) == 0
    err = capsys.readouterr().err
    assert "unreadable" in err and "truncated or corrupt gzip file" in err
    assert np.array_equal(get_data("mnist", root=root, download=False).valid.numpy(), train[2:])


def test_get_data_downloads_on_first_use(small_mnist, tmp_path):
    data = get_data("mnist", root=tmp_path)
    assert data.train.shape == (2, 784) and (tmp_path / "mnist.npz").is_file()


def test_get_data_without_network_names_the_fix(small_mnist, server, tmp_path):
    server.routes.clear()
    with pytest.raises(DatasetError) as e:
        get_data("mnist", root=tmp_path)
    message = str(e.value)
    assert "\n" not in message and "could not download train-images-idx3-ubyte" in message
    assert message.endswith(
        "or put train-images-idx3-ubyte or train-images-idx3-ubyte.gz, t10k-images-idx3-ubyte "
        "or t10k-images-idx3-ubyte.gz, train-labels-idx1-ubyte or train-labels-idx1-ubyte.gz, "
        "t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz in a directory DIR and run "
        "`python -m draw.datasets convert mnist --from DIR`")
    assert list(tmp_path.iterdir()) == []            # no empty raw/mnist/ left behind


@pytest.mark.parametrize("name", [n for n, s in REGISTRY.items() if not s.shipped])
def test_every_dataset_names_its_convert_command_when_the_download_fails(name, tmp_path,
                                                                         monkeypatch):
    """Issue 12: one line, every accepted file form, and the exact command, for each dataset."""
    owner = REGISTRY[REGISTRY[name].base or name]
    monkeypatch.setitem(REGISTRY, owner.name, dataclasses.replace(owner, files=tuple(
        dataclasses.replace(f, urls=(f"http://127.0.0.1:9/{f.name}",)) for f in owner.files)))
    with pytest.raises(DatasetError) as e:
        download_dataset(name, tmp_path / "data", timeout=1)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"could not download {owner.files[0].name}")
    assert message.endswith(f"in a directory DIR and run `python -m draw.datasets convert {name} "
                            "--from DIR`")
    for f in owner.files:
        assert f.name in message
        assert f.name.endswith(".gz") or f"{f.name} or {f.name}.gz" in message
    assert not (tmp_path / "data").exists()
