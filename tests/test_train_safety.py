"""train-draw.py's files always agree: the model file commits an epoch, a full disk says so, a
lock keeps a second process out, a killed run leaves nothing that stops the next; evaluation
cost under the user's control; sizes that cannot fit refused before anything is written."""
import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import draw.checkpoint
import draw.memory
import draw.training.draw_job
import draw.training.extensions
from draw.checkpoint import load_checkpoint, load_log, load_model
from draw.datasets import batches, get_data
from draw.errors import DrawError
from draw.likelihood import bound_statistics
from draw.memory import GB
from draw.training.draw_job import main
from draw.training.lock import LOCK_NAME, RunLock, RunLockedError, check_unlocked

TINY = dict(dataset="sample", subset=100, batch_size=50, n_iter=2, enc_dim=8, dec_dim=8,
            z_dim=3, attention="2,3", seed=3)


def the_run_dir(parent: Path) -> Path:
    (run_dir,) = [p for p in parent.iterdir() if p.is_dir()]
    return run_dir


def snapshot(path: Path):
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def enospc(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_full_disk_at_the_model_file_leaves_every_file_at_the_last_epoch(tmp_path,
                                                                          monkeypatch):
    real = draw.checkpoint.atomic_write_bytes
    saves = []

    def full_at_epoch_2(path, data):
        if str(path).endswith("_model.pkl"):
            saves.append(path)
            if len(saves) == 3:          # before training, epoch 1, epoch 2
                raise enospc(path)
        real(path, data)

    monkeypatch.setattr(draw.checkpoint, "atomic_write_bytes", full_at_epoch_2)
    with pytest.raises(DrawError) as info:
        main(**TINY, epochs=3, run_dir=str(tmp_path))
    run_dir = the_run_dir(tmp_path)
    assert str(info.value) == f"cannot write {run_dir / 'sample_model.pkl'}: No space left on device"
    assert load_checkpoint(run_dir / "sample_model.pkl")["epoch"] == 1
    assert [row["epoch"] for row in load_log(run_dir / "sample_log.pkl")] == [0, 1]
    assert not (run_dir / "epoch-002.png").exists()
    assert (run_dir / "sample.png").read_bytes() == (run_dir / "epoch-001.png").read_bytes()
    assert not list(run_dir.glob(".*"))       # no temp file, and the lock was released


def test_a_full_disk_at_the_pictures_is_repaired_by_the_resumed_run(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    main(**TINY, epochs=3, run_dir=str(reference))
    real = draw.training.extensions.save_png

    def full_at_epoch_2(image, path, *args, **kwargs):
        if Path(path).name == "epoch-002.png":
            raise enospc(Path(path).parent / ".epoch-002.png.x1y2z3.tmp")   # as atomic_path's
        real(image, path, *args, **kwargs)

    broken = tmp_path / "broken"
    monkeypatch.setattr(draw.training.extensions, "save_png", full_at_epoch_2)
    with pytest.raises(DrawError) as info:
        main(**TINY, epochs=3, run_dir=str(broken))
    run_dir = the_run_dir(broken)
    assert str(info.value) == f"cannot write {run_dir / 'epoch-002.png'}: No space left on device"
    assert load_checkpoint(run_dir / "sample_model.pkl")["epoch"] == 2    # committed first
    monkeypatch.undo()
    main(resume=str(run_dir))
    ref_dir = the_run_dir(reference)
    for name in ("epoch-002.png", "epoch-003.png", "sample.png"):
        assert (run_dir / name).read_bytes() == (ref_dir / name).read_bytes(), name


def test_a_second_process_is_locked_out_and_a_stale_lock_is_taken(tmp_path):
    main(**TINY, epochs=1, run_dir=str(tmp_path))
    run_dir = the_run_dir(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / LOCK_NAME).write_text(json.dumps(
            {"host": os.uname().nodename, "pid": holder.pid, "started": None}))
        before = snapshot(run_dir)
        with pytest.raises(RunLockedError) as info:
            main(resume=str(run_dir), epochs=2)
        assert f"is in use by process {holder.pid}" in str(info.value)
        assert "\n" not in str(info.value)
        assert snapshot(run_dir) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, and so is a temporary file a kill left
    (run_dir / ".sample_model.pkl.k1ll3d.tmp").write_bytes(b"partial")
    main(resume=str(run_dir), epochs=2)
    assert load_checkpoint(run_dir / "sample_model.pkl")["epoch"] == 2
    assert not list(run_dir.glob(".*"))


def test_lock_round_trip(tmp_path):
    lock = RunLock(tmp_path).acquire()
    with pytest.raises(RunLockedError, match=f"process {os.getpid()}"):
        RunLock(tmp_path).acquire()
    with pytest.raises(RunLockedError):
        check_unlocked(tmp_path)
    lock.release()
    check_unlocked(tmp_path)
    (tmp_path / LOCK_NAME).write_text("{\"pid\": 99")          # cut short by a kill ...
    with pytest.raises(RunLockedError):                       # ... or being written now
        RunLock(tmp_path).acquire()
    os.utime(tmp_path / LOCK_NAME, (0, 0))                    # a kill long ago: stale
    RunLock(tmp_path).acquire().release()


def test_a_run_killed_before_its_first_save_restarts(tmp_path):
    """--resume of a directory with config.json but no model file starts the run again from
    its settings, and ends as a run that was never killed."""
    whole = tmp_path / "whole"
    main(**TINY, epochs=2, run_dir=str(whole))
    killed = tmp_path / "killed" / "sample-20250101-000000"
    killed.mkdir(parents=True)
    for name in ("config.json", "args.txt"):
        (killed / name).write_bytes((the_run_dir(whole) / name).read_bytes())
    (killed / ".config.json.abcdef.tmp").write_bytes(b"{")
    main(resume=str(killed))
    a, _ = load_model(killed / "sample_model.pkl")
    b, _ = load_model(the_run_dir(whole) / "sample_model.pkl")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert "# restarted" in (killed / "args.txt").read_text()
    assert not list(killed.glob(".*"))


def test_evaluation_on_a_subset_every_n_epochs_and_the_whole_splits_at_the_end(tmp_path):
    main(**TINY, epochs=3, eval_every=2, eval_subset=120, run_dir=str(tmp_path))
    run_dir = the_run_dir(tmp_path)
    rows = load_log(run_dir / "sample_log.pkl")
    assert [row.get("valid_examples") for row in rows] == [120, None, 120, 500]
    assert [row.get("test_examples") for row in rows] == [120, None, 120, 500]
    model, _ = load_model(run_dir / "sample_model.pkl")
    test = get_data("sample").test
    bound, _ = bound_statistics(model, model, batches(test, 50), torch.Generator().manual_seed(3))
    assert rows[-1]["test_nll_bound"] == bound


@pytest.mark.parametrize("flags, expected", [
    ({"n_iter": 1_000_000_000}, "sequence.gif of 1,000,000,000 steps (--niter) would last"),
    ({"enc_dim": 100_000_000}, "needs about"),
    ({"batch_size": 1_000_000_000}, "--bs 1000000000 is larger than the training set (100 "
                                    "images with --subset)"),
    # sequence.gif keeps a frame of 100 samples per glimpse: 6,000 of them, not the model,
    # are what cannot fit (as sample.py counts them); 20,000 no GIF can play
    ({"n_iter": 6_000, "batch_size": 1}, "needs about"),
    ({"n_iter": 20_000}, "sequence.gif of 20,000 steps (--niter) would last 2,000,900 ms"),
    ({"threads": 10_000}, f"--threads must be at most {os.cpu_count()}, the CPUs of this "
                          f"machine, got 10000"),
    ({"learning_rate": 1e300}, "--lr must be at most 1"),
    ({"name": "a" * 250}, "--name must be at most 200 bytes long"),
])
def test_sizes_that_cannot_fit_are_refused_before_anything_is_written(tmp_path, monkeypatch,
                                                                      flags, expected):
    monkeypatch.setattr(draw.memory, "available_memory", lambda device=None: 4 * GB)
    with pytest.raises(DrawError) as info:
        main(**{**TINY, **flags}, run_dir=str(tmp_path / "runs"))
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_a_model_file_is_checked_before_it_is_built_as_oldmodel(tmp_path, monkeypatch):
    """A file claiming a 10^8-unit encoder is refused by its config, read alone: as another
    configuration, or, where the flags ask for the same, by its memory."""
    built = []
    monkeypatch.setattr(draw.training.draw_job, "build_model", lambda *a, **k: built.append(a))
    main(**TINY, epochs=1, run_dir=str(tmp_path / "first"))
    model_file = next((tmp_path / "first").glob("*/*_model.pkl"))
    ckpt = torch.load(model_file, weights_only=True)
    huge = tmp_path / "huge_model.pkl"
    torch.save({**ckpt, "config": {**ckpt["config"], "enc_dim": 100_000_000}}, huge)
    for flags, expected in (({}, "has another configuration: enc_dim 100000000 there, 8 here"),
                            ({"enc_dim": 100_000_000}, "the model of --oldmodel .* needs about")):
        with pytest.raises(DrawError, match=expected):
            main(**{**TINY, **flags}, oldmodel=str(huge), run_dir=str(tmp_path / "runs"))
    assert not built and not (tmp_path / "runs").exists()


def test_a_run_killed_before_its_config_is_refused_with_the_command_that_starts_it(tmp_path):
    """Killed while its config.json was being written, a run holds its args.txt, its (stale)
    lock and the temporary file, and nothing to continue from: --resume says so in one line,
    with the command line that starts it again, and changes nothing; a run starting in it
    right now is in use instead."""
    killed = tmp_path / "sample-20250101-000000"
    killed.mkdir()
    command = "python train-draw.py --dataset sample --niter 2 --epochs 3"
    (killed / "args.txt").write_text(command + "\n")
    (killed / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": 2 ** 22 + 1,
                                                "started": "0"}))
    (killed / ".config.json.abcdef.tmp").write_bytes(b'{"name": ')
    before = snapshot(tmp_path)
    with pytest.raises(DrawError) as info:
        main(resume=str(killed))
    assert str(info.value) == (f"--resume {killed}: the run was stopped before it saved its "
                               f"settings and never trained ({killed} can be deleted); start "
                               f"it again with: {command}")
    assert snapshot(tmp_path) == before
    lock = RunLock(killed).acquire()           # a live process: in use, not never trained
    try:
        with pytest.raises(RunLockedError):
            main(resume=str(killed))
    finally:
        lock.release()
