"""The downloader against a real HTTP server on 127.0.0.1, started here in a thread.

Success, a wrong file (checksum mismatch), a connection cut mid-file, a dead mirror followed by
a good one, and `python -m draw.datasets download` end to end on a small MNIST-format dataset.
"""
import dataclasses
import gzip
import hashlib
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from draw.datasets import DatasetError, get_data
from draw.datasets.__main__ import main
from draw.datasets.download import fetch
from draw.datasets.files import FileSpec
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
    assert path.read_bytes() == BODY
    err = capsys.readouterr().err
    assert "/missing/f.bin: HTTP 404" in err and "/cut/f.bin: connection" in err


def test_no_server_listening(tmp_path):
    # a port that was just free: nothing listens there, so the connection is refused
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = httpd.server_port
    httpd.server_close()
    with pytest.raises(DatasetError, match=f"could not download f.bin: http://127.0.0.1:{port}/"
                                           "f.bin: .*refused"):
        fetch(FileSpec("f.bin", SHA, (f"http://127.0.0.1:{port}/f.bin",)), tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- download NAME, end to end

def _idx(images: np.ndarray) -> bytes:
    return b"\x00\x00\x08\x03" + struct.pack(">III", *images.shape) + images.tobytes()


@pytest.fixture
def small_mnist(server, monkeypatch):
    """Register a small MNIST-format "mnist" whose files the server has, gzipped."""
    rng = np.random.default_rng(0)
    images = {"train-images-idx3-ubyte": rng.integers(0, 256, (10_002, 28, 28), dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)}
    files = []
    for name, x in images.items():
        server.routes[f"/mnist/{name}.gz"] = (gzip.compress(_idx(x), compresslevel=1), "ok")
        files.append(FileSpec(name, f"sha256:{hashlib.sha256(_idx(x)).hexdigest()}",
                              (server.url(f"/dead/{name}.gz"), server.url(f"/mnist/{name}.gz"))))
    monkeypatch.setitem(REGISTRY, "mnist",
                        dataclasses.replace(REGISTRY["mnist"], files=tuple(files)))
    return images


def test_download_command_end_to_end(small_mnist, tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["download", "mnist", "--root", str(root)]) == 0
    assert sorted(p.name for p in (root / "raw" / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz"]
    data = get_data("mnist", root=root, download=False)
    train = small_mnist["train-images-idx3-ubyte"].reshape(-1, 784)
    assert np.array_equal(data.train.numpy(), train[:2])
    assert np.array_equal(data.valid.numpy(), train[2:])
    assert np.array_equal(data.test.numpy(), small_mnist["t10k-images-idx3-ubyte"].reshape(5, 784))
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
    assert message.endswith("or put train-images-idx3-ubyte, t10k-images-idx3-ubyte in a "
                            "directory DIR and run `python -m draw.datasets convert mnist "
                            "--from DIR`")
    assert not (tmp_path / "mnist.npz").exists()
    assert list((tmp_path / "raw" / "mnist").iterdir()) == []
