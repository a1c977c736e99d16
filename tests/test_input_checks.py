"""Bad input refused in one line before any work: damaged model files, devices the project does
not run on, model sizes past what torch can address, a dataset whose images do not fit the
model, a hand-edited lock."""
import shutil
import socket
import struct
import zipfile
from pathlib import Path

import pytest
import torch

import draw.outputs.scores
from draw.checkpoint import (CheckpointError, load_checkpoint, load_log, resolve_device,
                             save_checkpoint)
from draw.classifier import ClassifierConfig
from draw.errors import DrawError
from draw.memory import ResourceError, parameter_count
from draw.model import DrawConfig, DrawModel
from draw.training.draw_job import main as train
from draw.training.lock import LOCK_NAME, RunLock, check_unlocked
from inline import ROOT, run_inline

CFG = DrawConfig(channels=1, height=28, width=28, n_iter=2, enc_dim=6, dec_dim=5, z_dim=3)
TINY = dict(dataset="sample", subset=100, batch_size=50, n_iter=2, enc_dim=8, dec_dim=8,
            z_dim=3, seed=3)
HUGE = [2 ** 63 - 1, 10 ** 20, 10 ** 16]      # past int64; a weight past 2^63 bytes


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def model_file(path: Path, dataset: str = "sample") -> Path:
    torch.manual_seed(0)
    save_checkpoint(path, DrawModel.from_config(CFG), run={"dataset": dataset})
    return path


def member_start(path: Path, member: str | None = None) -> tuple[str, int]:
    """The archive's `member` (default: its largest tensor) and the offset of its first byte."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member) if member else max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        # the local header's own name and extra lengths: torch pads the extra field to align
        # tensors, and the central directory does not repeat that padding
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.filename, info.header_offset + 30 + name_len + extra_len


def damage(path: Path, data: bytes, at: int = 8, member: str | None = None) -> str:
    """Overwrite bytes inside `member` of `path` (default: its largest tensor) with `data`;
    the member's name."""
    member, start = member_start(path, member)
    with open(path, "r+b") as f:
        f.seek(start + at)
        f.write(data)
    return member


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny finished run of one epoch on the shipped sample digits."""
    parent = tmp_path_factory.mktemp("runs")
    train(**TINY, epochs=1, run_dir=str(parent))
    (run,) = parent.iterdir()
    return run


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


def snapshot(path: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# 1. damaged model files

def test_damaged_tensor_bytes_are_refused_and_the_intact_file_loads(tmp_path):
    intact = model_file(tmp_path / "intact_model.pkl")
    damaged = tmp_path / "damaged_model.pkl"
    damaged.write_bytes(intact.read_bytes())
    member = damage(damaged, b"\xff" * 64)
    assert load_checkpoint(intact)["config"] == CFG.to_dict()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(damaged)
    assert str(info.value) == f"{damaged} is damaged: its member {member} fails its CRC-32 check"


def test_a_flip_that_leaves_finite_numbers_is_caught(tmp_path):
    """A NaN check would miss this one: the damaged weights load as ordinary numbers."""
    path = model_file(tmp_path / "m_model.pkl")
    with open(path, "rb") as f:
        f.seek(member_start(path)[1])
        low = f.read(1)[0]
    damage(path, bytes([low ^ 1]), at=0)              # the lowest mantissa bit of one float
    state = torch.load(path, weights_only=True)["model"]
    assert all(torch.isfinite(t).all() for t in state.values())
    with pytest.raises(CheckpointError, match="is damaged: .* fails its CRC-32 check"):
        load_checkpoint(path)


def test_a_damaged_log_file_is_refused(run_dir, tmp_path):
    log = tmp_path / "sample_log.pkl"
    log.write_bytes((run_dir / "sample_log.pkl").read_bytes())
    damage(log, b"\xff" * 8, member="archive/data.pkl")      # the rows' pickle
    with pytest.raises(CheckpointError) as info:
        load_log(log)
    assert str(info.value) == (f"{log} is damaged: its member archive/data.pkl fails its "
                               f"CRC-32 check")


@pytest.mark.parametrize("path", sorted((ROOT / "pretrained").glob("*_model.pkl")),
                         ids=lambda p: p.name)
def test_the_shipped_pretrained_files_pass_the_check(path):
    load_checkpoint(path)


def test_evaluate_and_resume_refuse_a_damaged_file_in_one_line(run_dir, tmp_path, capsys,
                                                              monkeypatch):
    run = copy_run(run_dir, tmp_path)
    model = run / "sample_model.pkl"
    damage(model, b"\xff" * 64)
    before = snapshot(run)
    assert run_inline("evaluate.py", model, monkeypatch=monkeypatch) == 1
    assert one_error_line(capsys) == (f"error: {model} is damaged: its member "
                                      f"{member_start(model)[0]} fails its CRC-32 check")
    assert run_inline("train-draw.py", "--resume", run, "--epochs", 2,
                  monkeypatch=monkeypatch) == 1
    assert one_error_line(capsys).startswith(f"error: --resume: {model} is damaged")
    assert snapshot(run) == before


# 2. devices

@pytest.mark.parametrize("name", ["meta", "mps", "xla", "ipu"])
def test_devices_other_than_cpu_and_cuda_are_refused(name):
    with pytest.raises(DrawError) as info:
        resolve_device(name)
    assert str(info.value) == f"--device {name} is not supported (auto, cpu, cuda, cuda:N)"


def test_cpu_and_auto_are_accepted():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_train_draw_refuses_a_device_before_making_a_run_directory(tmp_path, capsys,
                                                                   monkeypatch):
    runs = tmp_path / "runs"
    assert run_inline("train-draw.py", "--dataset", "sample", "--subset", 100, "--epochs", 1,
                  "--niter", 2, "--device", "meta", "--run-dir", runs,
                  monkeypatch=monkeypatch) == 1
    assert one_error_line(capsys) == ("error: --device meta is not supported "
                                      "(auto, cpu, cuda, cuda:N)")
    assert not runs.exists()


def test_train_classifier_refuses_a_device_before_making_a_run_directory(tmp_path, capsys,
                                                                        monkeypatch):
    runs = tmp_path / "runs"
    assert run_inline("train-classifier.py", "--device", "meta", "--run-dir", runs,
                  "--data-dir", tmp_path / "no-data", monkeypatch=monkeypatch) == 1
    assert one_error_line(capsys) == ("error: --device meta is not supported "
                                      "(auto, cpu, cuda, cuda:N)")
    assert not runs.exists() and not (tmp_path / "no-data").exists()


@pytest.mark.parametrize("name, device", [("evaluate.py", "meta"), ("sample.py", "mps"),
                                          ("sample.py", "xla")])
def test_evaluate_and_sample_refuse_a_device_in_one_line(name, device, tmp_path, capsys,
                                                         monkeypatch):
    model = model_file(tmp_path / "m_model.pkl")
    out = tmp_path / "samples"
    extra = ["--output-dir", out] if name == "sample.py" else []
    assert run_inline(name, model, "--device", device, *extra, monkeypatch=monkeypatch) == 1
    assert one_error_line(capsys) == (f"error: --device {device} is not supported "
                                      f"(auto, cpu, cuda, cuda:N)")
    assert not out.exists()


# 3. sizes past what torch can address

@pytest.mark.parametrize("z_dim", HUGE)
def test_a_draw_model_too_large_to_build_is_one_line(z_dim):
    with pytest.raises(ResourceError) as info:
        parameter_count(DrawConfig(z_dim=z_dim))
    assert str(info.value) == (f"a model of these sizes (1x28x28 images, enc 256, dec 256, "
                               f"z {z_dim}) is too large to build: no machine has the memory "
                               f"for its weights")


@pytest.mark.parametrize("enc_dim", HUGE)
def test_a_classifier_too_large_to_build_is_one_line(enc_dim):
    with pytest.raises(ResourceError, match=f"read 12x12, LSTM {enc_dim}\\) is too large to build"):
        parameter_count(ClassifierConfig(enc_dim=enc_dim))


def test_the_largest_buildable_sizes_still_say_how_much_memory(tmp_path, capsys, monkeypatch):
    assert parameter_count(DrawConfig(z_dim=10 ** 14)) > 10 ** 16
    runs = tmp_path / "runs"
    for z_dim, expected in ((10 ** 14, "needs about"), (2 ** 63 - 1, "is too large to build"),
                            (10 ** 20, "is too large to build")):
        assert run_inline("train-draw.py", "--dataset", "sample", "--subset", 100, "--niter", 2,
                      "--z-dim", z_dim, "--device", "cpu", "--run-dir", runs,
                      monkeypatch=monkeypatch) == 1
        line = one_error_line(capsys)
        assert expected in line and f"z {z_dim}" in line, line
    assert not runs.exists()


# 4. the dataset's shape against the model's, before the data are loaded

@pytest.mark.parametrize("dataset, shape", [("cifar10", "3x32x32"),
                                            ("two-digit-mnist", "1x60x60")])
def test_evaluate_checks_the_shape_before_loading_the_data(dataset, shape, tmp_path, capsys,
                                                           monkeypatch):
    model = model_file(tmp_path / "m_model.pkl")
    loaded = []
    monkeypatch.setattr(draw.outputs.scores, "get_data", lambda *a, **k: loaded.append(a))
    monkeypatch.setenv("DRAW_DATA_PATH", str(tmp_path / "no-data"))
    assert run_inline("evaluate.py", model, "--dataset", dataset, "--device", "cpu",
                  monkeypatch=monkeypatch) == 1
    assert one_error_line(capsys) == (f"error: {model} models 1x28x28 images, but {dataset} "
                                      f"has {shape}")
    assert not loaded and not (tmp_path / "no-data").exists()


def test_the_shape_of_the_dataset_a_model_was_trained_on_is_checked_too(tmp_path):
    model = model_file(tmp_path / "m_model.pkl", dataset="svhn2")
    with pytest.raises(DrawError, match="models 1x28x28 images, but svhn2 has 3x32x32"):
        draw.outputs.scores.main(str(model), device="cpu", data_dir=str(tmp_path / "none"))
    assert not (tmp_path / "none").exists()


# 5. a hand-edited lock

@pytest.mark.parametrize("pid", [10 ** 20, 2 ** 63, 2 ** 31])
def test_a_lock_naming_an_impossible_pid_is_stale(pid, tmp_path):
    """No process has a PID past pid_t's range: the lock is damaged, taken like a stale one."""
    (tmp_path / LOCK_NAME).write_text(f'{{"host": "{socket.gethostname()}", "pid": {pid}, '
                                      f'"started": null}}')
    check_unlocked(tmp_path)
    RunLock(tmp_path).acquire().release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_run_with_such_a_lock_resumes(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    (run / LOCK_NAME).write_text(f'{{"host": "{socket.gethostname()}", '
                                 f'"pid": 99999999999999999999, "started": null}}')
    train(resume=str(run), epochs=2)
    assert load_checkpoint(run / "sample_model.pkl")["epoch"] == 2
    assert not (run / LOCK_NAME).exists()
