"""Settings shared by the whole test suite."""
import importlib
import sys

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests' models are tiny: threads gain nothing and only fight over a shared 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Terminal:
    """A stream that says it is a terminal and writes to the one it wraps."""

    def __init__(self, stream):
        self._stream = stream

    def isatty(self) -> bool:
        return True

    def __getattr__(self, name):
        return getattr(self._stream, name)


@pytest.fixture
def terminal(monkeypatch):
    """Call `terminal()` in a test to make stderr say it is a terminal: progress bars appear
    only there (tqdm's disable=None), and pytest's capture is not one. A call, not a setup:
    pytest installs its capture of the test's stderr only as the test starts; what the bars
    write goes on to it."""
    return lambda: monkeypatch.setattr(sys, "stderr", _Terminal(sys.stderr))


@pytest.fixture
def bench_script():
    """`bench_script("NAME")` imports bench/NAME.py, a script (bench/ is on pytest's sys.path:
    pyproject.toml), as its siblings import it."""
    return importlib.import_module
