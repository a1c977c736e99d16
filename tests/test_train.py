"""train-draw.py end to end on the shipped `sample` data: files, exact resume after SIGINT and
SIGKILL, and bad command lines that fail in one line without touching the disk."""
import ast
import csv
import dataclasses
import json
import math
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from draw.checkpoint import load_checkpoint, load_log, load_model, save_checkpoint
from draw.datasets import batches, get_data
from draw.errors import DrawError
from draw.likelihood import bound_statistics
from draw.model import DrawConfig, DrawModel
from draw.training.draw_job import main
from draw.training.job import lr_tag

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train-draw.py"
# one thread: the same arithmetic in every process, and no fight over the two cores
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LONGNAME = "sample-r2-w3-t2-enc8-dec8-z3-lr13"     # in the header and config.json
FILES = "sample"                                   # the classic <name>_model.pkl, <name>_log.pkl
ARGS = ["--dataset", "sample", "--subset", "400", "--bs", "50", "--epochs", "3", "--niter", "2",
        "--enc-dim", "8", "--dec-dim", "8", "--z-dim", "3", "--attention", "2,3", "--seed", "3",
        "--lr-warmup", "5", "--lr-decay", "0.5"]    # 8 steps per epoch
HANG_GUARD_S = 600     # only so that a broken build fails instead of hanging; never reached


def launch(args, cwd):
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
    out, err = process.communicate(timeout=HANG_GUARD_S)
    return process.returncode, out, err


def wait_for(condition, process):
    while not condition():
        assert process.poll() is None, f"training ended early:\n{process.communicate()[1]}"
        time.sleep(0.005)


def the_run_dir(parent: Path) -> Path:
    (run_dir,) = [p for p in parent.iterdir() if p.is_dir()]
    return run_dir


def the_run_dir_named(parent: Path, name: str) -> Path:
    (run_dir,) = parent.glob(f"{name}-*")
    return run_dir


class Reference:
    """An uninterrupted run, started once and left running while other runs start."""

    def __init__(self, parent: Path):
        self.parent = parent
        self.process = launch(ARGS, parent)
        self._result = None

    def result(self):
        if self._result is None:
            self._result = finish(self.process)
            assert self._result[0] == 0, self._result[2]
        return self._result

    @property
    def run_dir(self) -> Path:
        self.result()
        return the_run_dir(self.parent)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return Reference(tmp_path_factory.mktemp("reference"))


def untimed(rows):
    return [{k: v for k, v in row.items() if not k.startswith("time")} for row in rows]


def read_csv_log(path: Path) -> list[dict]:
    """The CSV log as rows like the pickle's: numbers parsed, empty cells left out."""
    with open(path, newline="") as f:
        return [{key: ast.literal_eval(cell) for key, cell in row.items() if cell != ""}
                for row in csv.DictReader(f)]


def assert_same_run(run_dir: Path, reference_dir: Path):
    model, ckpt = load_model(run_dir / f"{FILES}_model.pkl")
    ref_model, ref_ckpt = load_model(reference_dir / f"{FILES}_model.pkl")
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["batch"]) == (3, 24, 0)
    for (name, a), (_, b) in zip(model.state_dict().items(), ref_model.state_dict().items()):
        assert torch.equal(a, b), name
    assert untimed(load_log(run_dir / f"{FILES}_log.pkl")) == \
        untimed(load_log(reference_dir / f"{FILES}_log.pkl"))
    # the CSV is rewritten with the pickle, a resumed run's too
    assert read_csv_log(run_dir / f"{FILES}_log.csv") == load_log(run_dir / f"{FILES}_log.pkl")


def test_interrupted_runs_resume_bit_identically(reference, tmp_path):
    """Ctrl-C, resume, SIGKILL, resume: the same parameters and log as a run that never stopped."""
    first = launch([*ARGS, "--run-dir", "."], tmp_path)
    wait_for(lambda: list(tmp_path.glob("*/*_model.pkl")), first)    # saved before training
    first.send_signal(signal.SIGINT)
    code, out, err = finish(first)
    assert code == 130, err
    run_dir = the_run_dir(tmp_path)
    last = err.strip().splitlines()[-1]
    # one plain line whose numbers are the progress bar's: epoch E in progress, batch B of 8
    assert re.fullmatch(rf"stopped by Ctrl-C (in epoch \d after batch [1-7] of 8|after epoch "
                        rf"\d); saved\. Continue with: python train-draw\.py --resume "
                        rf"{run_dir.name}", last), last
    model_file = run_dir / f"{FILES}_model.pkl"
    stopped = load_checkpoint(model_file)
    assert stopped["epoch"] < 3

    second = launch(["--resume", str(run_dir)], tmp_path)
    inode = model_file.stat().st_ino

    def trained_and_saved():      # a save after training on (a model file is never partial)
        return (model_file.stat().st_ino != inode
                and load_checkpoint(model_file)["iteration"] > stopped["iteration"])

    wait_for(trained_and_saved, second)
    second.kill()
    assert second.wait(timeout=HANG_GUARD_S) == -signal.SIGKILL
    killed = load_checkpoint(model_file)
    assert stopped["iteration"] < killed["iteration"] and killed["epoch"] < 3

    code, out, err = finish(launch(["--resume", str(run_dir)], tmp_path))
    assert code == 0, err
    assert f"Resuming experiment {LONGNAME}" in out
    # where it goes on from, in the words of the Ctrl-C line: the killed run's last save
    where = (f"in epoch {killed['epoch'] + 1} after batch {killed['batch']}" if killed["batch"]
             else f"after epoch {killed['epoch']}")
    assert f"resumed at: {where}; learning rate now" in out
    assert_same_run(run_dir, reference.run_dir)
    assert (run_dir / "args.txt").read_text().count("# resumed") == 2


def test_output_to_a_pipe_is_the_header_epoch_lines_and_plain_progress(reference):
    """Where output is not a terminal (a cluster job's log file, `| tee`), no progress bar
    writes its carriage-return frames: stdout holds the header, one line per epoch and, within
    each epoch, indented plain lines of progress."""
    code, out, err = reference.result()       # both stdout and stderr were pipes
    assert "\r" not in out and "\r" not in err
    header, epochs = out.strip().split("\n\n")
    assert header.startswith(f"Running experiment {LONGNAME}")
    lines = epochs.splitlines()
    assert [line.split("|")[0].split() for line in lines if not line.startswith("  ")] == [
        ["epoch", str(k)] for k in range(4)]
    progress = [line for line in lines if line.startswith("  ")]
    assert progress and all(re.fullmatch(r"  epoch [123]: batch \d+/\d+ \| loss \d+\.\d\d, "
                                         r"mean \d+\.\d\d \| \d+ s",
                                         line) for line in progress)


def test_resuming_a_finished_run_does_nothing(reference, capsys):
    before = snapshot(reference.run_dir)
    assert main(resume=str(reference.run_dir)) is None
    assert "already has 3 epochs; nothing to do" in capsys.readouterr().out
    assert snapshot(reference.run_dir) == before


def test_end_to_end_files(reference):
    code, out, err = reference.result()
    run_dir = reference.run_dir
    assert re.fullmatch(r"sample-\d{8}-\d{6}", run_dir.name)
    assert f"Running experiment {LONGNAME}" in out
    assert len(re.findall(r"^epoch +\d+ \| iter", out, flags=re.M)) == 4    # before + 3 epochs

    config = json.loads((run_dir / "config.json").read_text())
    assert config["name"] == LONGNAME
    assert config["run"]["batch_size"] == 50 and config["run"]["learning_rate"] == 1e-3
    assert "--attention 2,3" in (run_dir / "args.txt").read_text()

    model, ckpt = load_model(run_dir / f"{FILES}_model.pkl")
    assert model.config == DrawConfig(channels=1, height=28, width=28, n_iter=2, enc_dim=8,
                                      dec_dim=8, z_dim=3, read_N=2, write_N=3)
    assert model.config.to_dict() == config["config"]
    assert ckpt["run"]["dataset"] == "sample" and ckpt["optimizer"] is not None
    # warm-up over steps 0-4, halved per epoch: each epoch's last step, and the next step's
    assert [row.get("learning_rate") for row in ckpt["log"]] == [None, 1e-3, 5e-4, 2.5e-4]
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [1.25e-4]
    assert "learning rate: 0.001, warm-up 5 steps, x0.5 per epoch" in out
    rows = load_log(run_dir / f"{FILES}_log.pkl")
    assert [(r["epoch"], r["iteration"]) for r in rows] == [(0, 0), (1, 8), (2, 16), (3, 24)]
    keys = {"train_nll_bound", "valid_nll_bound", "test_nll_bound", "train_total_gradient_norm",
            "train_total_step_norm", "time_train_this_epoch", "time_total",
            *[f"{split}_kl_term_{t}" for split in ("train", "valid", "test") for t in range(2)]}
    for row in rows[1:]:
        assert keys <= set(row)
        assert all(isinstance(row[k], float) for k in keys)
    assert rows[-1]["train_nll_bound"] < rows[1]["train_nll_bound"]
    # the same rows as CSV: one line per epoch, one column per key, every float exact
    assert read_csv_log(run_dir / f"{FILES}_log.csv") == rows
    with open(run_dir / f"{FILES}_log.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[:2] == ["epoch", "iteration"] and len(header) == len(set().union(*rows))
    # the saved parameters are the ones that were evaluated: the test bound recomputes exactly
    test = get_data("sample").test
    bound, _ = bound_statistics(model, model, batches(test, 50), torch.Generator().manual_seed(3))
    assert bound == rows[-1]["test_nll_bound"]
    assert config["processes"] == 1 and config["run"]["flush_denormal"] is True

    for k in range(4):
        assert (run_dir / f"epoch-{k:03d}.png").exists()
    assert (run_dir / "sample.png").read_bytes() == (run_dir / "epoch-003.png").read_bytes()
    with Image.open(run_dir / "training.gif") as gif:
        assert gif.n_frames == 4
    with Image.open(run_dir / "sequence.gif") as gif:
        assert gif.mode in ("P", "RGB") and gif.n_frames >= 1
    assert not list(run_dir.glob(".*"))            # no temporary files left


def test_oldmodel_starts_from_its_parameters(reference, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = reference.run_dir / f"{FILES}_model.pkl"
    main(dataset="sample", subset=100, batch_size=100, epochs=1, n_iter=2, enc_dim=8, dec_dim=8,
         z_dim=3, attention="2,3", oldmodel=str(old), learning_rate=1e-9)
    new, _ = load_model(the_run_dir(tmp_path) / f"{FILES}_model.pkl")
    old_model, _ = load_model(old)
    for a, b in zip(new.parameters(), old_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)        # one step of a negligible learning rate


def test_oldmodel_goes_on_with_another_number_of_glimpses(reference, tmp_path, monkeypatch):
    """No parameter depends on T: a file trained with 2 glimpses starts a run with 3, whose
    model is the file's parameters unrolled one step further. Other sizes stay refused."""
    monkeypatch.chdir(tmp_path)
    old = reference.run_dir / f"{FILES}_model.pkl"
    old_model, _ = load_model(old)
    flags = dict(dataset="sample", subset=100, batch_size=100, epochs=1, enc_dim=8, dec_dim=8,
                 z_dim=3, attention="2,3", oldmodel=str(old), learning_rate=1e-9)
    main(**flags, n_iter=3)
    new, _ = load_model(the_run_dir(tmp_path) / f"{FILES}_model.pkl")
    assert new.config == dataclasses.replace(old_model.config, n_iter=3)
    for name, p in old_model.state_dict().items():
        torch.testing.assert_close(new.state_dict()[name], p, rtol=0, atol=1e-6)
    # the file's first two steps are the new model's: the same canvases from the same noise
    u = torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(new.sample(5, u)[:2], old_model.sample(5, u[:2]), rtol=0,
                               atol=1e-5)
    with pytest.raises(DrawError, match=r"^--oldmodel \S+ has another configuration: "
                                        r"z_dim 3 there, 4 here$"):
        main(**{**flags, "z_dim": 4}, n_iter=3)
    # a file with a zero initial state both grows its learned biases and changes T
    zero = DrawModel.from_config(dataclasses.replace(old_model.config,
                                                     learned_initial_state=False))
    zero.load_state_dict({k: v for k, v in old_model.state_dict().items()
                          if k not in ("c_0", "h_0_enc", "h_0_dec")})
    save_checkpoint(tmp_path / "zero_model.pkl", zero)
    main(**{**flags, "oldmodel": "zero_model.pkl"}, n_iter=4, name="grown")
    grown, _ = load_model(the_run_dir_named(tmp_path, "grown") / "grown_model.pkl")
    assert grown.config == dataclasses.replace(old_model.config, n_iter=4)
    assert all(0 < p.abs().max() < 1e-6 for p in (grown.c_0, grown.h_0_enc, grown.h_0_dec))


def test_oldmodel_with_a_zero_initial_state_goes_on_with_learned_biases(reference, tmp_path,
                                                                         monkeypatch, capsys):
    """A model file from before section 2.2's learned c_0, h_0^enc, h_0^dec (a zero initial
    state) starts a run that learns them from zero: at first the same model, then they move."""
    monkeypatch.chdir(tmp_path)
    old_model, _ = load_model(reference.run_dir / f"{FILES}_model.pkl")
    zero = DrawModel.from_config(dataclasses.replace(old_model.config,
                                                     learned_initial_state=False))
    zero.load_state_dict({k: v for k, v in old_model.state_dict().items()
                          if k not in ("c_0", "h_0_enc", "h_0_dec")})
    save_checkpoint(tmp_path / "zero_model.pkl", zero)
    flags = dict(dataset="sample", subset=100, batch_size=100, n_iter=2, enc_dim=8, dec_dim=8,
                 z_dim=3, attention="2,3", oldmodel="zero_model.pkl")
    main(**flags, epochs=1, learning_rate=1e-9, name="tiny")
    assert "initial state: c_0, h_0^enc, h_0^dec learned (section 2.2)" in capsys.readouterr().out
    new, _ = load_model(the_run_dir_named(tmp_path, "tiny") / "tiny_model.pkl")
    assert new.config.learned_initial_state
    for name, p in zero.state_dict().items():
        torch.testing.assert_close(new.state_dict()[name], p, rtol=0, atol=1e-6)
    assert all(0 < p.abs().max() < 1e-6 for p in (new.c_0, new.h_0_enc, new.h_0_dec))
    # and where the run keeps a zero initial state, the file is its own configuration
    main(**flags, epochs=1, learning_rate=1e-9, learned_initial_state=False, name="kept")
    assert "initial state: zero (--no-learned-initial-state)" in capsys.readouterr().out
    kept, _ = load_model(the_run_dir_named(tmp_path, "kept") / "kept_model.pkl")
    assert not kept.config.learned_initial_state and not hasattr(kept, "c_0")
    # a learned one does not shrink back: the flag to leave out is named
    grown = str(the_run_dir_named(tmp_path, "tiny") / "tiny_model.pkl")
    with pytest.raises(DrawError, match=r"^--oldmodel \S+ has another configuration: "
                                        r"learned_initial_state True there, False here \(leave "
                                        r"out --no-learned-initial-state\)$"):
        main(**{**flags, "oldmodel": grown}, epochs=1, learned_initial_state=False)


def test_oldmodel_goes_on_with_a_learned_prior(reference, tmp_path, monkeypatch, capsys):
    """--learned-prior over a file with the paper's N(0, I) grows the prior at N(0, I): at
    first the same model, then the prior moves. A file with a learned prior does not go on
    without one: the flag to give is named."""
    monkeypatch.chdir(tmp_path)
    old = reference.run_dir / f"{FILES}_model.pkl"
    old_model, _ = load_model(old)
    flags = dict(dataset="sample", subset=100, batch_size=100, n_iter=2, enc_dim=8, dec_dim=8,
                 z_dim=3, attention="2,3", epochs=1, learning_rate=1e-9)
    main(**flags, oldmodel=str(old), learned_prior=True, name="prior")
    assert "prior: learned, N(m_t, s_t) given h_{t-1}^dec (--learned-prior)" in \
        capsys.readouterr().out
    grown = the_run_dir_named(tmp_path, "prior") / "prior_model.pkl"
    new, _ = load_model(grown)
    assert new.config == dataclasses.replace(old_model.config, learned_prior=True)
    for name, p in old_model.state_dict().items():
        torch.testing.assert_close(new.state_dict()[name], p, rtol=0, atol=1e-6)
    assert all(0 < p.abs().max() < 1e-6 for p in new.prior.parameters())
    with pytest.raises(DrawError, match=r"^--oldmodel \S+ has another configuration: "
                                        r"learned_prior True there, False here \(give "
                                        r"--learned-prior\)$"):
        main(**flags, oldmodel=str(grown))
    main(**flags, oldmodel=str(old), name="paper")
    assert "prior: N(0, I), the paper's" in capsys.readouterr().out


def test_lr_tag_is_the_classic_one():
    assert [lr_tag(v) for v in (1e-3, 3e-4, 0.005, 0.1)] == ["13", "34", "53", "11"]


def snapshot(path: Path):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(path.rglob("*"))
            if p.is_file()}


def run_script(argv, capsys):
    """train-draw.py in this process: its exit status and its stderr lines."""
    old_argv = sys.argv
    sys.argv = [str(SCRIPT), *argv]
    try:
        with pytest.raises(SystemExit) as info:
            runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        sys.argv = old_argv
    return info.value.code, capsys.readouterr().err.strip().splitlines()


def write_other_config(path: Path):
    model = DrawModel.from_config(DrawConfig(n_iter=4, enc_dim=8, dec_dim=8, z_dim=3, read_N=2,
                                             write_N=3))
    save_checkpoint(path, model)


BAD = {
    "attention_not_a_number": (["--attention=2,x"], "--attention"),
    "attention_one_size": (["--attention=5"], "--attention"),
    "window_larger_than_image": (["--attention=2,40"],
                                 "--attention 2,40: write_N must fit in the 28x28 image, got 40"),
    "zero_window": (["--attention=0,5"], "--attention 0,5: read_N must be a positive integer"),
    "zero_iterations": (["--niter", "0"], "--niter must be a positive integer, got 0"),
    "negative_batch": (["--bs", "-5"], "--bs"),
    "zero_z": (["--z-dim", "0"], "--z-dim must be a positive integer, got 0"),
    "zero_epochs": (["--epochs", "0"], "--epochs"),
    "zero_learning_rate": (["--lr", "0"], "--lr"),
    "unknown_dataset": (["--dataset", "nope"], "nope"),
    "not_an_int": (["--niter", "ten"], "--niter"),
    "unknown_flag": (["--nither", "3"], "--nither"),
    "bad_device": (["--device", "tpu9"], "--device"),
    "missing_oldmodel": (["--oldmodel", "missing_model.pkl"], "missing_model.pkl"),
    "garbage_oldmodel": (["--oldmodel", "garbage.pkl"], "garbage.pkl"),
    "oldmodel_of_another_config": (["--oldmodel", "other_model.pkl"], "z_dim 3 there, 100 here"),
    "resume_missing": (["--resume", "no-such-run"], "no-such-run"),
    "negative_seed": (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295"),
    "huge_seed": (["--seed", "1099511627776"], "--seed"),
    "name_is_a_path": (["--name", "../escaped"], "--name must be a name"),
    "name_is_dots": (["--name", ".."], "--name must be a name"),
    "bad_plot_port": (["--plot-port", "0"], "--plot-port"),
    "negative_keep_every": (["--keep-every", "-1"],
                            "--keep-every must be 0 (only the last) or a positive integer"),
    "missing_config": (["--config", "nope.toml"], "nope.toml"),
    "config_not_toml": (["--config", "bad.toml"], "bad.toml is not valid TOML"),
    "config_unknown_key": (["--config", "unknown.toml"], "unknown setting 'nither'"),
    "config_wrong_type": (["--config", "wrong.json"], "--z-dim must be an integer, got 'ten'"),
    "config_bad_value": (["--config", "zero.toml"], "--epochs must be a positive integer"),
    "config_suffix": (["--config", "settings.yaml"], "expected a .toml or .json file"),
}
CONFIGS = {"bad.toml": "niter = = 3\n", "unknown.toml": "nither = 3\n",
           "wrong.json": '{"z-dim": "ten"}', "zero.toml": "epochs = 0\n",
           "settings.yaml": "niter: 3\n"}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_flags_fail_in_one_line_and_touch_nothing(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.pkl").write_bytes(b"\x80\x04not really a pickle")
    write_other_config(tmp_path / "other_model.pkl")
    for name, text in CONFIGS.items():
        (tmp_path / name).write_text(text)
    before = snapshot(tmp_path)
    argv, expected = BAD[case]
    code, err = run_script(["--dataset", "sample", "--niter", "2", *argv], capsys)
    assert code in (1, 2)
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert snapshot(tmp_path) == before              # no run directory, no file touched


def test_resume_refuses_changed_settings_and_touches_nothing(reference, capsys):
    run_dir = reference.run_dir
    before = snapshot(run_dir)
    for argv, expected in ((["--bs", "20"], "--bs is 50 there"),
                           (["--niter", "5"], "--niter is 2 there"),
                           (["--oldmodel", "x.pkl"], "cannot be combined")):
        code, err = run_script(["--resume", str(run_dir), *argv], capsys)
        assert code == 1 and len(err) == 1 and expected in err[0], err
    assert snapshot(run_dir) == before


TINY = dict(dataset="sample", subset=100, batch_size=100, epochs=1, n_iter=2, enc_dim=8,
            dec_dim=8, z_dim=3, attention="2,3")


def test_a_resumed_run_may_continue_at_a_lower_learning_rate(tmp_path):
    main(**TINY, run_dir=str(tmp_path), learning_rate=1e-3)
    (run_dir,) = tmp_path.iterdir()
    name = json.loads((run_dir / "config.json").read_text())["name"]
    assert name.endswith("-lr13")
    main(resume=str(run_dir), epochs=2, learning_rate=2e-4)
    # the experiment keeps the name it started with
    assert json.loads((run_dir / "config.json").read_text())["name"] == name
    ckpt = load_checkpoint(run_dir / "sample_model.pkl")
    assert [row.get("learning_rate") for row in ckpt["log"]] == [None, 1e-3, 2e-4]
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == 2e-4 == ckpt["run"]["learning_rate"]


def test_a_resumed_run_may_stop_its_decay_and_hold_a_rate(tmp_path, capsys):
    # lr * decay ** epoch, epochs counted from 0: 1e-3, then 5e-4; the resume holds 2e-4
    main(**{**TINY, "epochs": 2}, run_dir=str(tmp_path), learning_rate=1e-3, lr_decay=0.5)
    (run_dir,) = tmp_path.iterdir()
    capsys.readouterr()
    main(resume=str(run_dir), epochs=4, learning_rate=2e-4, lr_decay=1.0)
    # the header says the rate the resume takes at once
    assert "resumed at: after epoch 2; learning rate now 0.0002" in capsys.readouterr().out
    ckpt = load_checkpoint(run_dir / "sample_model.pkl")
    assert [row.get("learning_rate") for row in ckpt["log"]] == [None, 1e-3, 5e-4, 2e-4, 2e-4]
    assert ckpt["run"]["lr_decay"] == 1.0 and ckpt["optimizer"]["param_groups"][0]["lr"] == 2e-4


def test_keep_every_keeps_those_epochs_model_files_beside_the_run(tmp_path, monkeypatch,
                                                                  capsys):
    main(**{**TINY, "epochs": 3}, run_dir=str(tmp_path / "a"), keep_every=2)
    (run_dir,) = (tmp_path / "a").iterdir()
    assert f"kept model files: every 2 epoch(s), in {run_dir / 'epochs'}" in capsys.readouterr().out
    kept = run_dir / "epochs"
    assert [p.name for p in kept.iterdir()] == ["sample_epoch-002_model.pkl"]
    # epoch 2's own state: a run of 2 epochs ends with the same parameters
    main(**{**TINY, "epochs": 2}, run_dir=str(tmp_path / "b"))
    (two,) = (tmp_path / "b").iterdir()
    second, last = (load_checkpoint(path) for path in (kept / "sample_epoch-002_model.pkl",
                                                      run_dir / "sample_model.pkl"))
    assert (second["epoch"], last["epoch"]) == (2, 3)
    reference = load_checkpoint(two / "sample_model.pkl")["model"]
    assert all(torch.equal(second["model"][k], reference[k]) for k in reference)
    assert not all(torch.equal(last["model"][k], reference[k]) for k in reference)
    # a kept file is not a run to resume: the run would go on in epochs/ and overwrite it
    with pytest.raises(DrawError, match="a file --keep-every kept; resume the run"):
        main(resume=str(kept / "sample_epoch-002_model.pkl"), epochs=4)
    # --resume still finds the run's one model file, and may change the setting; the epoch it
    # resumes after is kept first (a kill between its save and its keep lost it); where the
    # disk has no hard links the file is copied
    epoch_3 = (run_dir / "sample_model.pkl").read_bytes()
    monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError(1, "no links")))
    main(resume=str(run_dir), epochs=4, keep_every=1)
    assert sorted(p.name for p in kept.iterdir()) == ["sample_epoch-002_model.pkl",
                                                      "sample_epoch-003_model.pkl",
                                                      "sample_epoch-004_model.pkl"]
    assert (kept / "sample_epoch-003_model.pkl").read_bytes() == epoch_3
    assert ((kept / "sample_epoch-004_model.pkl").read_bytes()
            == (run_dir / "sample_model.pkl").read_bytes())


def test_flush_denormal_is_a_setting_the_run_applies(tmp_path, monkeypatch, capsys):
    applied = []
    monkeypatch.setattr(torch, "set_flush_denormal", applied.append)
    main(**TINY, run_dir=str(tmp_path / "on"))
    main(**TINY, run_dir=str(tmp_path / "off"), flush_denormal=False)
    assert applied == [True, False]
    out = capsys.readouterr().out
    assert "flush denormals: on" in out and "flush denormals: off" in out
    config = json.loads((the_run_dir(tmp_path / "off") / "config.json").read_text())
    assert config["run"]["flush_denormal"] is False


def test_threads_is_a_setting_the_run_applies(tmp_path, monkeypatch, capsys):
    applied = []
    monkeypatch.setattr(torch, "set_num_threads", applied.append)
    main(**TINY, run_dir=str(tmp_path / "default"))
    main(**TINY, run_dir=str(tmp_path / "one"), threads=1)
    assert applied == [1]                      # PyTorch's own default unless asked
    assert "CPU threads: " in capsys.readouterr().out
    config = json.loads((the_run_dir(tmp_path / "one") / "config.json").read_text())
    assert "threads" not in config["run"]      # where the run trains, not what it is


def test_compile_trains_the_compiled_glimpses_to_the_same_parameters(tmp_path, monkeypatch,
                                                                     capsys):
    """--compile runs draw.fast_path.compile_glimpses on the model; traced with the aot_eager backend
    (inductor's C++ compile takes minutes on a CPU), the run ends where the eager one does."""
    import draw.fast_path
    compiled = []

    def compile_glimpses(model):
        compiled.append(model)
        return draw.fast_path.compile_glimpses(model, backend="aot_eager")

    monkeypatch.setattr("draw.training.draw_job.compile_glimpses", compile_glimpses)
    main(**TINY, run_dir=str(tmp_path / "eager"))
    main(**TINY, run_dir=str(tmp_path / "compiled"), compile=True)
    assert len(compiled) == 1
    assert "compiled glimpses: yes" in capsys.readouterr().out
    eager, _ = load_model(the_run_dir(tmp_path / "eager") / f"{FILES}_model.pkl")
    graph, _ = load_model(the_run_dir(tmp_path / "compiled") / f"{FILES}_model.pkl")
    for a, b in zip(eager.parameters(), graph.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_long_run_compiles_by_default_and_counts_what_is_left(tmp_path, monkeypatch, capsys):
    """Without --compile or --no-compile a run compiles when its glimpses left to train (steps
    x T) reach draw.fast_path's threshold: counted from the checkpoint when resumed."""
    import draw.fast_path
    compiled = []
    monkeypatch.setattr("draw.training.draw_job.compile_glimpses",
                        lambda model: compiled.append(model) or
                        draw.fast_path.compile_glimpses(model, backend="aot_eager"))
    steps = 2 * math.ceil(400 / TINY["batch_size"])         # 2 epochs of the --subset
    glimpses = steps * TINY["n_iter"]
    monkeypatch.setattr("draw.fast_path.AUTO_COMPILE_GLIMPSES", glimpses)
    monkeypatch.setattr("draw.fast_path.toolchain_error", lambda device: None)   # inductor: seconds
    run_dir = tmp_path / "run"
    main(**{**TINY, "subset": 400, "epochs": 2}, run_dir=str(run_dir))
    assert len(compiled) == 1
    assert f"compiled glimpses: yes: {glimpses:,} glimpses to train" in capsys.readouterr().out
    main(resume=str(the_run_dir(run_dir)), epochs=3)          # one epoch left: half as many
    assert len(compiled) == 1
    assert (f"compiled glimpses: no: {glimpses // 2:,} glimpses to train, fewer than the "
            f"{glimpses:,}") in capsys.readouterr().out
    main(resume=str(the_run_dir(run_dir)), epochs=4, compile=True)
    assert len(compiled) == 2
    assert "compiled glimpses: yes (--compile)" in capsys.readouterr().out


def test_a_checkpoint_of_the_old_format_resumes(tmp_path):
    """Model files written before the settings dataclass store a `run` dict of 14 keys; a run
    resumed from one goes on exactly as a run that never stopped."""
    flags = {**TINY, "subset": 200, "batch_size": 50,
             "learned_initial_state": False}        # as every run had before the setting
    whole, part = tmp_path / "whole", tmp_path / "part"
    main(**{**flags, "epochs": 2}, run_dir=str(whole))
    main(**flags, run_dir=str(part))
    model_file = the_run_dir(part) / f"{FILES}_model.pkl"
    ckpt = load_checkpoint(model_file)
    old_keys = ("name", "dataset", "epochs", "batch_size", "learning_rate", "attention",
                "n_iter", "enc_dim", "dec_dim", "z_dim", "oldmodel", "seed", "grad_clip",
                "subset")
    ckpt["run"] = {key: ckpt["run"][key] for key in old_keys}
    del ckpt["config"]["learned_initial_state"]
    torch.save(ckpt, model_file)
    main(resume=str(the_run_dir(part)), epochs=2)
    a, _ = load_model(model_file)
    b, _ = load_model(the_run_dir(whole) / f"{FILES}_model.pkl")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("rank, local_rank, expected", [
    (0, 0, "error: --niter must be a positive integer, got 0"),
    (3, 0, "error: rank 3: --niter must be a positive integer, got 0"),   # another machine's
    (1, 1, None),                  # the same machine's first process says it: exit quietly
])
def test_under_torchrun_each_machine_reports_a_bad_flag_once(rank, local_rank, expected,
                                                             tmp_path, monkeypatch, capsys):
    """Flags are checked before the processes join: nothing waits, nothing is written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    code, err = run_script(["--dataset", "sample", "--niter", "0"], capsys)
    assert code == 1
    assert err == ([expected] if expected else [])
    assert not list(tmp_path.iterdir())
