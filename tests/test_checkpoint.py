"""Model and log files: round trips, safe loading, one-line errors, atomic writes, RNG state."""
import errno
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from draw.checkpoint import (CheckpointError, load_checkpoint, load_log, load_model, resolve_device,
                             rng_state, save_checkpoint, save_log, save_log_csv, set_rng_state)
from draw.errors import DrawError
from draw.model import DrawConfig, DrawModel, nll_bound

CFG = DrawConfig(channels=1, height=8, width=8, n_iter=2, enc_dim=6, dec_dim=5, z_dim=3,
                 read_N=2, write_N=3)


def trained_pair():
    torch.manual_seed(0)
    model = DrawModel.from_config(CFG)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.rand(4, CFG.x_dim)
    for _ in range(2):
        optimizer.zero_grad()
        nll_bound(x, *model(x)).mean().backward()
        optimizer.step()
    return model, optimizer, x


def test_model_round_trip_restores_parameters_optimizer_and_extras(tmp_path):
    model, optimizer, x = trained_pair()
    path = tmp_path / "run_model.pkl"
    save_checkpoint(path, model, optimizer, epoch=3, iteration=17, note={"a": [1, 2.5]})

    loaded, ckpt = load_model(path)
    assert loaded.config == CFG
    assert ckpt["format"] == "draw-model" and ckpt["version"] == 1
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["note"]) == (3, 17, {"a": [1, 2.5]})
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name

    # the optimizer state continues exactly: one more step from both gives the same parameters
    optimizer2 = torch.optim.Adam(loaded.parameters(), lr=1e-2)
    optimizer2.load_state_dict(ckpt["optimizer"])
    u = torch.randn(CFG.n_iter, 4, CFG.z_dim)
    for m, opt in ((model, optimizer), (loaded, optimizer2)):
        opt.zero_grad()
        nll_bound(x, *m(x, u)).mean().backward()
        opt.step()
    for a, b in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(a, b)


def test_log_round_trip(tmp_path):
    rows = [{"epoch": 0, "iteration": 0, "test_nll_bound": 543.2},
            {"epoch": 1, "iteration": 10, "train_nll_bound": 101.5, "train_kl_term_0": 3.25}]
    save_log(tmp_path / "run_log.pkl", rows)
    assert load_log(tmp_path / "run_log.pkl") == rows


def test_log_as_csv(tmp_path):
    """One line per row, a column per key in the order first seen, empty where a row lacks
    the key, floats in full."""
    rows = [{"epoch": 0, "iteration": 0, "test_nll_bound": 543.2},
            {"epoch": 1, "iteration": 10, "train_nll_bound": 0.1 + 0.2, "test_nll_bound": 99.0,
             "training_finish_requested": True}]
    save_log_csv(tmp_path / "run_log.csv", rows)
    assert (tmp_path / "run_log.csv").read_text() == (
        "epoch,iteration,test_nll_bound,train_nll_bound,training_finish_requested\n"
        "0,0,543.2,,\n"
        "1,10,99.0,0.30000000000000004,True\n")
    assert [p.name for p in tmp_path.iterdir()] == ["run_log.csv"]     # no temporary file


class _Payload:
    """Unpickling this would create a file: the safe loader must refuse to run it."""

    def __init__(self, target, through_shell=False):
        self.target, self.through_shell = target, through_shell

    def __reduce__(self):
        if self.through_shell:      # a module torch blocks outright, with its own message
            return (os.system, (f"touch {self.target}",))
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("through_shell", [False, True], ids=["builtins.open", "os.system"])
def test_foreign_pickle_is_refused_without_running_it(tmp_path, through_shell):
    evil, marker = tmp_path / "evil.pkl", tmp_path / "was_executed"
    torch.save({"format": "draw-model", "payload": _Payload(marker, through_shell)}, evil)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(evil)
    assert str(info.value).startswith(f"{evil} is refused as unsafe")
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(CheckpointError):
        load_model(plain)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["missing", "directory", "text", "truncated", "empty",
                                  "log_as_model", "model_as_log", "other_version", "not_a_dict",
                                  "bad_config", "wrong_shapes"])
def test_unusable_files_give_one_line_checkpoint_errors(tmp_path, case):
    model, optimizer, _ = trained_pair()
    good = tmp_path / "good_model.pkl"
    save_checkpoint(good, model, optimizer)
    path = tmp_path / "bad.pkl"
    if case == "directory":
        path.mkdir()
    elif case == "text":
        path.write_text("epoch,loss\n1,2\n")
    elif case == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "empty":
        path.write_bytes(b"")
    elif case in ("log_as_model", "model_as_log"):
        save_log(path, []) if case == "log_as_model" else save_checkpoint(path, model)
    elif case == "other_version":
        torch.save({**torch.load(good, weights_only=True), "version": 2}, path)
    elif case == "not_a_dict":
        torch.save([1, 2, 3], path)
    elif case == "bad_config":
        torch.save({**torch.load(good, weights_only=True),
                    "config": {**CFG.to_dict(), "n_iter": 0}}, path)
    elif case == "wrong_shapes":
        torch.save({**torch.load(good, weights_only=True),
                    "config": {**CFG.to_dict(), "z_dim": 4}}, path)
    loader = load_log if case == "model_as_log" else load_model
    with pytest.raises(CheckpointError) as info:
        loader(path)
    message = str(info.value)
    assert "\n" not in message and "bad.pkl" in message and "weights_only" not in message
    assert isinstance(info.value, DrawError)
    if case in ("text", "truncated", "empty"):
        # not the reader's own text: a text file's was a bare "(101)"
        assert message.endswith("(damaged, or another program's file)")


def test_failed_save_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    model, optimizer, _ = trained_pair()
    path = tmp_path / "run_model.pkl"
    save_checkpoint(path, model, optimizer, epoch=1)
    before = path.read_bytes()

    def full_disk(self, data):
        # what a write to a full disk does: part of the bytes land, then ENOSPC
        with open(self, "wb") as handle:
            handle.write(bytes(data[:100]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, model, optimizer, epoch=2)
    assert str(info.value) == f"cannot write {path}: No space left on device"
    with pytest.raises(CheckpointError, match="cannot write"):
        save_log(tmp_path / "run_log.pkl", [])
    with pytest.raises(CheckpointError, match="cannot write .*run_log.csv: No space left"):
        save_log_csv(tmp_path / "run_log.csv", [{"epoch": 0}])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_model.pkl"]


def test_saving_into_a_missing_directory_is_a_checkpoint_error(tmp_path):
    model, _, _ = trained_pair()
    with pytest.raises(CheckpointError, match="cannot write"):
        save_checkpoint(tmp_path / "nowhere" / "m.pkl", model)


def test_rng_state_round_trip_through_a_file(tmp_path):
    generator = torch.Generator().manual_seed(5)
    torch.rand(3), np.random.rand(2), random.random(), torch.rand(2, generator=generator)
    model, _, _ = trained_pair()
    save_checkpoint(tmp_path / "m.pkl", model, rng=rng_state(generator))

    def draws(gen):
        return (torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random()],
                [np.random.randn()], torch.rand(4, generator=gen).tolist())

    expected = draws(generator)
    other = torch.Generator().manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "m.pkl")["rng"], other)
    assert draws(other) == expected


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DrawError, match="not a device name"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DrawError, match="CUDA is not available"):
            resolve_device("cuda")
