"""Output files are checked before any work (`check_output_files`): plot-kl.py, sample.py,
bench/reconstructions.py and bench/two_digit_reader.py refuse an output that is a folder, one
of their inputs, another of their outputs, or in a folder they cannot write, and lose nothing.

The scripts run in-process (runpy), as tests/test_scripts.py runs them; a step that must not be
reached ("work") is replaced by one that fails the test if it is.
"""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import draw.checkpoint
import draw.datasets
import draw.outputs.sampling
from draw.checkpoint import save_checkpoint, save_log
from draw.model import DrawConfig, DrawModel
from draw.outputs.plotting import OutputPathError, check_output_files
from inline import run_inline



def refused(capsys, code: int, *names) -> str:
    """The one error line of a failed run, which must name every one of `names`."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    assert all(os.fspath(name) in err[0] for name in names), err[0]
    assert ".tmp" not in err[0]                     # no temporary file's name
    return err[0]


def no_work(monkeypatch, *targets):
    """Make each (module, name) fail the test if called: the command started its work."""
    def work(*args, **kwargs):
        raise AssertionError("the command started its work before refusing its output")

    for module, name in targets:
        monkeypatch.setattr(module, name, work)


def model_file(path: Path, n_iter: int = 2) -> Path:
    cfg = DrawConfig(channels=1, height=4, width=4, n_iter=n_iter, enc_dim=4, dec_dim=4, z_dim=2)
    save_checkpoint(path, DrawModel.from_config(cfg))
    return path


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@pytest.fixture
def locked(tmp_path):
    """A folder no new file can go into: read-only by its mode, or where that binds no one
    (root), immutable (chattr +i); the test is skipped where neither holds."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if _writable(folder) and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", folder], capture_output=True).returncode == 0
    if _writable(folder):
        folder.chmod(0o755)
        pytest.skip("no folder here refuses new files")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", folder], check=True)
    folder.chmod(0o755)


# --- the check itself ---------------------------------------------------------------------

def test_a_folder_an_input_or_a_repeated_output_is_refused_however_spelled(tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "x_log.pkl"
    log.write_bytes(b"the log")
    (tmp_path / "link.pkl").symlink_to(log)
    os.link(log, tmp_path / "hard.pkl")
    (tmp_path / "d").mkdir()
    for spelling in ("x_log.pkl", "./x_log.pkl", str(log), "d/../x_log.pkl", "link.pkl",
                     "hard.pkl"):
        with pytest.raises(OutputPathError, match=f"--html {spelling} is .*x_log.pkl, a file "
                                                  f"this command reads"):
            check_output_files([("--html", spelling)], inputs=["x_log.pkl"])
    with pytest.raises(OutputPathError, match="--surface d is a folder"):
        check_output_files([("--surface", "d")])
    with pytest.raises(OutputPathError, match="--heatmap ./a.png is also the file of --surface"):
        check_output_files([("--surface", "a.png"), ("--heatmap", "./a.png")])
    with pytest.raises(OutputPathError, match="--heatmap hard.pkl is also the file of --surface"):
        check_output_files([("--surface", "link.pkl"), ("--heatmap", "hard.pkl")])
    # one output where another's folder must go: either would fail once the other is written
    for outputs in ([("--surface", "n"), ("--html", "n/c.html")],
                    [("--html", "n/c.html"), ("--surface", "n")]):
        with pytest.raises(OutputPathError, match=f"{tmp_path}/n is the file of --surface|"
                                                  f"--surface n is the folder that the file of --html"):
            check_output_files(outputs)
    # distinct new files, in a folder still to be made (the writers make it; the check does not)
    check_output_files([("--surface", "new/a.png"), ("--heatmap", "new/b.png")], inputs=[log])
    assert not (tmp_path / "new").exists()
    assert log.read_bytes() == b"the log"


def test_a_folder_that_cannot_be_made_or_written_is_refused(tmp_path, locked):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match=f"--out {tmp_path}/file/sub/a.png: "
                                              f"{tmp_path}/file is not a folder"):
        check_output_files([("--out", tmp_path / "file" / "sub" / "a.png")])
    for out in (locked / "a.png", locked / "new" / "a.png"):
        with pytest.raises(OutputPathError, match=f"--out {out}: cannot write into {locked} "):
            check_output_files([("--out", out)])
    assert list(locked.iterdir()) == []


# --- plot-kl.py ----------------------------------------------------------------------------

def draw_log(path: Path) -> Path:
    rows = [{"epoch": e, "iteration": 10 * e, "train_nll_bound": 100.0 - e,
             **{f"train_kl_term_{t}": e * (t + 1.0) for t in range(3)}} for e in range(1, 4)]
    save_log(path, rows)
    return path


def test_plot_kl_refuses_to_overwrite_its_log_or_repeat_an_output(tmp_path, capsys,
                                                                  monkeypatch):
    log = draw_log(tmp_path / "x_log.pkl")
    before = log.read_bytes()
    run = lambda *a: run_inline("plot-kl.py", *a, monkeypatch=monkeypatch)
    refused(capsys, run(log, "--html", log), log)
    # the default --html
    refused(capsys, run(log, "--surface", tmp_path / "x_log.html"), tmp_path / "x_log.html",
            "--surface")
    refused(capsys, run(log, "--surface", tmp_path / "a.png", "--heatmap", tmp_path / "a.png"),
            "--heatmap", tmp_path / "a.png", "--surface")
    assert log.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_log.pkl"]


def test_plot_kl_checks_every_output_before_writing_the_first(tmp_path, capsys, monkeypatch):
    log = draw_log(tmp_path / "x_log.pkl")
    (tmp_path / "notes").write_text("x")
    (tmp_path / "pictures").mkdir()
    run = lambda *a: run_inline("plot-kl.py", *a, monkeypatch=monkeypatch)
    # the html's folder cannot be made: formerly the two PNGs were written first
    refused(capsys, run(log, "--html", tmp_path / "notes" / "c.html"), tmp_path / "notes")
    # a folder as --surface: formerly "[Errno 21] Is a directory" naming the temporary file
    line = refused(capsys, run(log, "--surface", tmp_path / "pictures"), tmp_path / "pictures")
    assert "is a folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "pictures", "x_log.pkl"]
    assert list((tmp_path / "pictures").iterdir()) == []
    # a folder still to be made is made, as for the PNGs of sample.py
    assert run(log, "--html", tmp_path / "new" / "c.html") == 0
    assert (tmp_path / "new" / "c.html").read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "x_kl.png").is_file() and (tmp_path / "x_kl_heatmap.png").is_file()


def test_plot_kl_names_a_classifier_log_as_such(tmp_path, capsys, monkeypatch):
    # train-classifier.py's log: evaluated epochs, error rates and cross-entropy, no KL terms
    rows = [{"epoch": 0, "iteration": 0, "valid_error": 90.0, "valid_cross_entropy": 2.3,
             "test_error": 90.0, "test_cross_entropy": 2.3}]
    rows += [{"epoch": e, "iteration": 3 * e, "train_error": 50.0 / e, "train_cross_entropy": 1.0,
              "valid_error": 60.0 / e, "test_error": 60.0 / e} for e in (1, 2)]
    save_log(tmp_path / "c_log.pkl", rows)
    line = refused(capsys, run_inline("plot-kl.py", tmp_path / "c_log.pkl",
                                      monkeypatch=monkeypatch))
    assert "classifier's" in line and "train-draw.py" in line and "no epoch" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c_log.pkl"]


# --- sample.py -----------------------------------------------------------------------------

def test_sample_refuses_an_unwritable_folder_before_sampling(tmp_path, locked, capsys,
                                                              monkeypatch):
    model = model_file(tmp_path / "m_model.pkl")
    no_work(monkeypatch, (draw.outputs.sampling, "build_model"))
    refused(capsys, run_inline("sample.py", model, "--n-samples", 4, "--output-dir", locked,
                               monkeypatch=monkeypatch), locked)
    assert list(locked.iterdir()) == []


def test_sample_refuses_to_overwrite_its_model_or_a_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    model = model_file(out / "strip.png")           # a model file under one of the names
    before = model.read_bytes()
    (out / "time-001.png").mkdir()
    no_work(monkeypatch, (draw.outputs.sampling, "build_model"))
    run = lambda *a: run_inline("sample.py", *a, monkeypatch=monkeypatch)
    refused(capsys, run(model, "--n-samples", 4, "--output-dir", out), out / "time-001.png")
    (out / "time-001.png").rmdir()
    refused(capsys, run(model, "--n-samples", 4, "--output-dir", out), out / "strip.png")
    assert model.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["strip.png"]


def test_sample_removes_only_the_stale_frames_of_a_longer_model(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    run = lambda model: run_inline("sample.py", model, "--n-samples", 4, "--output-dir", out,
                                   monkeypatch=monkeypatch)
    assert run(model_file(tmp_path / "long_model.pkl", n_iter=6)) == 0
    # files that are not sample.py's frames stay, even with names like theirs
    keep = ["notes.txt", "time-0004.png", "time-9.png", "xtime-004.png"]
    for name in keep:
        (out / name).write_text("mine")
    (out / "time-007.png").mkdir()
    capsys.readouterr()
    assert run(model_file(tmp_path / "short_model.pkl", n_iter=2)) == 0
    frames = ["time-000.png", "time-001.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["sample.png", "sequence.gif", "strip.png", "time-007.png", *frames, *keep])
    assert all((out / name).read_text() == "mine" for name in keep)
    assert "removed 4 frames (time-002.png .. time-005.png)" in capsys.readouterr().out


# --- bench/reconstructions.py and bench/two_digit_reader.py -------------------------------

@pytest.mark.parametrize("script", ["bench/reconstructions.py", "bench/two_digit_reader.py"])
def test_bench_out_is_refused_before_loading_or_training(script, tmp_path, capsys,
                                                         monkeypatch):
    model = model_file(tmp_path / "m_model.pkl")
    before = model.read_bytes()
    (tmp_path / "pictures").mkdir()
    no_work(monkeypatch, (draw.checkpoint, "load_checkpoint"), (draw.datasets, "get_data"))
    run = lambda *a: run_inline(script, *a, monkeypatch=monkeypatch)
    refused(capsys, run(model, "--out", model), model)
    refused(capsys, run(model, "--out", tmp_path / "pictures"), tmp_path / "pictures")
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_model.pkl", "pictures"]
