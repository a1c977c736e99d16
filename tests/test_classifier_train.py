"""train-classifier.py end to end on a tiny cluttered MNIST: files, log, exact resume, test error,
and one-line errors that write nothing.

A small labelled "mnist" of the shipped sample's real digits (labels drawn at random) stands in
for MNIST in a temporary data directory; cluttered-mnist is composed from it.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import draw.memory
from draw.checkpoint import CheckpointError, load_classifier, load_log, load_model
from draw.classifier import AttentionClassifier, ClassifierConfig
from draw.datasets import get_data
from draw.datasets.converted import save_converted
from draw.datasets.registry import REGISTRY
from draw.datasets.store import converted_path
from draw.errors import DrawError
from draw.memory import GB, ResourceError
from draw.outputs.scores import classifier_test_error, main as evaluate
from draw.training.classify import ClassifierSettings, ClassifyTask, main
from draw.training.draw_job import main as train_draw
from draw.training.export import export_model

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="cluttered-mnist", n_iter=2, attention=4, enc_dim=8, batch_size=40,
            learning_rate=3e-3, device="cpu")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data directory holding a labelled mnist of 120 / 30 / 30 real digits."""
    root = tmp_path_factory.mktemp("data")
    sample = get_data("sample")
    rng = np.random.default_rng(0)
    splits = {"train": sample.train[:120].numpy(), "valid": sample.valid[:30].numpy(),
              "test": sample.test[:30].numpy()}
    for split in list(splits):
        splits[f"{split}_labels"] = rng.integers(0, 10, len(splits[split]), dtype=np.uint8)
    save_converted(converted_path("mnist", root), REGISTRY["mnist"], splits)
    return str(root)


def test_task_loss_and_evaluation():
    """The loss is the batch's mean cross-entropy; evaluation's numbers are means over all the
    examples of all its batches, the error in percent."""
    torch.manual_seed(0)
    cfg = ClassifierConfig(height=12, width=12, n_iter=2, enc_dim=6, read_N=3, n_classes=4)
    task = ClassifyTask(AttentionClassifier.from_config(cfg).double())
    x = torch.rand(7, 144, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    logits = task.model(x)
    loss, sums = task.loss((x, y))
    assert torch.allclose(loss, F.cross_entropy(logits, y))
    wrong = (logits.argmax(1) != y).sum().item()
    assert sums["error"].item() == 100 * wrong and sums["examples"].item() == 7
    means = task.evaluate([(x[:3], y[:3]), (x[3:], y[3:])])
    assert means["error"] == pytest.approx(100 * wrong / 7)
    assert means["cross_entropy"] == pytest.approx(F.cross_entropy(logits, y).item())
    assert task.model.training


def _run_dir(parent: Path) -> Path:
    (run_dir,) = [p for p in parent.iterdir() if p.is_dir()]
    return run_dir


def test_a_run_writes_its_files_and_logs_errors_in_percent(data_dir, tmp_path):
    main(**TINY, epochs=2, data_dir=data_dir, run_dir=str(tmp_path), name="c", eval_subset=20)
    run_dir = _run_dir(tmp_path)
    name = "c"
    for f in (f"{name}_model.pkl", f"{name}_log.pkl", f"{name}_log.csv", "config.json", "args.txt",
              "glimpses.png", "glimpses-000.png", "glimpses-001.png", "glimpses-002.png"):
        assert (run_dir / f).is_file(), f
    log = load_log(run_dir / f"{name}_log.pkl")
    assert [row["epoch"] for row in log] == [0, 1, 2]
    assert [row["iteration"] for row in log] == [0, 3, 6]          # 120 images, batches of 40
    for row in log[1:]:
        for key in ("train_error", "valid_error", "test_error"):
            assert 0 <= row[key] <= 100
            # every error is a whole number of images: of 120 train, of --eval-subset's 20
            # valid / test images after epoch 1, of all 30 after the last
            n = 120 if key == "train_error" else 30 if row["epoch"] == 2 else 20
            assert abs(row[key] * n / 100 - round(row[key] * n / 100)) < 1e-9, (key, row)
        assert row["train_cross_entropy"] > 0
    assert "valid_error" in log[0] and "train_error" not in log[0]
    # the saved model scores the fixed test images as the log's last row does
    model_file = run_dir / f"{name}_model.pkl"
    assert classifier_test_error(model_file, data_dir=data_dir) == pytest.approx(
        log[-1]["test_error"], abs=1e-9)
    model, ckpt = load_classifier(model_file)
    assert model.config.n_iter == 2 and model.config.read_N == 4
    assert ckpt["run"]["dataset"] == "cluttered-mnist"


def test_resume_continues_exactly(data_dir, tmp_path):
    """One epoch, then a resume to two, ends with the parameters of two epochs in one go (the
    second epoch's training images are composed afresh from the seed in both)."""
    main(**TINY, epochs=2, data_dir=data_dir, run_dir=str(tmp_path / "straight"))
    main(**TINY, epochs=1, data_dir=data_dir, run_dir=str(tmp_path / "split"))
    split_dir = _run_dir(tmp_path / "split")
    main(resume=str(split_dir), epochs=2, data_dir=data_dir, device="cpu")
    straight, _ = load_classifier(next(_run_dir(tmp_path / "straight").glob("*_model.pkl")))
    resumed, ckpt = load_classifier(next(split_dir.glob("*_model.pkl")))
    assert ckpt["epoch"] == 2
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_compiled_glimpses_train_and_evaluate_as_eager(data_dir, tmp_path, monkeypatch, capsys):
    """--compile compiles the classifier's glimpses (draw.fast_path.compile_glimpses, traced
    with aot_eager: inductor takes minutes) and the run ends where the eager one does, with the
    same test errors; by default a run compiles by DRAW's rule, and the header says why."""
    import draw.fast_path
    compiled = []
    monkeypatch.setattr("draw.training.classify.compile_glimpses",
                        lambda model: compiled.append(model) or
                        draw.fast_path.compile_glimpses(model, backend="aot_eager"))
    glimpses = 3 * TINY["n_iter"]                   # 120 images, batches of 40, one epoch
    main(**TINY, epochs=1, data_dir=data_dir, run_dir=str(tmp_path / "eager"))
    assert compiled == []
    assert (f"compiled glimpses: no: {glimpses:,} glimpses to train, fewer than the "
            f"{draw.fast_path.AUTO_COMPILE_GLIMPSES:,}") in capsys.readouterr().out
    main(**TINY, epochs=1, data_dir=data_dir, run_dir=str(tmp_path / "compiled"), compile=True)
    assert len(compiled) == 1 and "compiled glimpses: yes (--compile)" in capsys.readouterr().out
    monkeypatch.setattr("draw.fast_path.AUTO_COMPILE_GLIMPSES", glimpses)
    monkeypatch.setattr("draw.fast_path.toolchain_error", lambda device: None)  # no probe
    main(**TINY, epochs=1, data_dir=data_dir, run_dir=str(tmp_path / "auto"))
    assert len(compiled) == 2
    assert f"compiled glimpses: yes: {glimpses:,} glimpses to train" in capsys.readouterr().out
    runs = {}
    for name in ("eager", "compiled"):
        run_dir = _run_dir(tmp_path / name)
        runs[name] = (load_classifier(next(run_dir.glob("*_model.pkl")))[0],
                      load_log(next(run_dir.glob("*_log.pkl"))))
    (eager, eager_log), (graph, graph_log) = runs["eager"], runs["compiled"]
    for (name, a), b in zip(eager.named_parameters(), graph.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    for key in ("valid_error", "test_error"):
        assert [row[key] for row in graph_log] == [row[key] for row in eager_log], key


def test_a_classifier_file_is_not_a_draw_model_and_the_other_way_round(data_dir, tmp_path):
    main(**TINY, epochs=1, data_dir=data_dir, run_dir=str(tmp_path))
    model_file = next(_run_dir(tmp_path).glob("*_model.pkl"))
    with pytest.raises(CheckpointError, match="is a classifier .*, not a DRAW model"):
        load_model(model_file)                       # what sample.py calls
    with pytest.raises(DrawError, match="--resume: .* is a classifier"):
        train_draw(resume=str(model_file))
    # evaluate.py scores a classifier's file: its error on the whole test split
    assert evaluate(model_file, data_dir=data_dir, device="cpu") == {
        "test_error": classifier_test_error(model_file, data_dir=data_dir)}
    draw_dir = tmp_path / "draw"
    train_draw(dataset="sample", n_iter=1, epochs=1, subset=20, batch_size=10, enc_dim=4,
               dec_dim=4, z_dim=2, device="cpu", run_dir=str(draw_dir))
    with pytest.raises(CheckpointError, match="is a DRAW model file, not a classifier's"):
        load_classifier(next(_run_dir(draw_dir).glob("*_model.pkl")))
    with pytest.raises(DrawError, match="--resume: .* is a DRAW model file"):
        main(resume=str(_run_dir(draw_dir)), data_dir=data_dir)


def test_settings_check_every_run_setting_for_a_labelled_dataset():
    """RunSettings' checks all apply to cluttered-mnist, though it is no generation dataset;
    --dataset is checked against the labelled datasets."""
    for bad, message in ((dict(batch_size=0), "--bs must be a positive integer"),
                         (dict(learning_rate=-1.0), "--lr must be a positive number"),
                         (dict(seed=-1), "--seed must be an integer"),
                         (dict(name="a/b"), "--name must be a name"),
                         (dict(dataset="sample"), "unknown --dataset 'sample'; choose from "
                                                  "mnist, cluttered-mnist")):
        with pytest.raises(DrawError, match=message):
            ClassifierSettings(**bad)
    assert ClassifierSettings().dataset == "cluttered-mnist"


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "bmnist"], "bmnist"),
    (["--attention", "101"], "--attention 101: read_N must fit in the 100x100 image, got 101"),
    (["--niter", "0"], "--niter must be a positive integer, got 0"),
    (["--enc-dim", "0"], "--enc-dim must be a positive integer, got 0"),
    (["--config", "missing.toml"], "missing.toml"),
    # sizes are checked as train-draw.py's (draw/training/run.py, check_run_sizes): before
    # this, the run directory was made and the first evaluation never ended
    (["--niter", "1000000000"], "glimpses.png of 1,000,000,000 glimpses (--niter), one "
                                "column each, would be 100,999,999,999x807 pixels"),
    (["--enc-dim", "100000000"], "training this model (T=8, read 12x12, LSTM 100000000) on "
                                 "batches of 100 needs about"),
    (["--bs", "1000"], "--bs 1000 is larger than the training set (120 images)"),
    (["--threads", "10000"], "--threads must be at most"),
])
def test_bad_input_is_one_line_and_writes_nothing(data_dir, tmp_path, flags, message):
    out = subprocess.run([sys.executable, str(ROOT / "train-classifier.py"), *flags,
                          "--data-dir", data_dir, "--run-dir", str(tmp_path / "runs")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert message in out.stderr
    assert not (tmp_path / "runs").exists()


def test_memory_counts_every_glimpse_and_the_picture(data_dir, tmp_path, monkeypatch):
    """600 glimpses fit glimpses.png; training them and drawing it do not fit 1 GB."""
    monkeypatch.setattr(draw.memory, "available_memory", lambda device=None: GB)
    with pytest.raises(ResourceError, match=r"training this model \(T=600, read 4x4, LSTM 8\) "
                                            r"on batches of 40 needs about 1\.\d GB"):
        main(**{**TINY, "n_iter": 600}, data_dir=data_dir, run_dir=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_a_run_killed_before_its_config_is_refused_with_its_command(data_dir, tmp_path):
    killed = tmp_path / "cluttered-mnist-20250101-000000"
    killed.mkdir()
    (killed / "args.txt").write_text("python train-classifier.py --niter 4\n")
    (killed / ".config.json.abcdef.tmp").write_bytes(b"{")
    with pytest.raises(DrawError, match=r"never trained .*; start it again with: python "
                                        r"train-classifier.py --niter 4$"):
        main(resume=str(killed), data_dir=data_dir)
    assert sorted(p.name for p in killed.iterdir()) == [".config.json.abcdef.tmp", "args.txt"]


def test_evaluate_checks_a_classifier_file_as_a_draw_one(tmp_path):
    """A crafted file asking for 10^9 glimpses (which never end) or a 10^8-unit LSTM (which
    no memory holds) is one line from evaluate.py, before the model is built."""
    cfg = ClassifierConfig(n_iter=2, enc_dim=8, read_N=4)
    ckpt = {"format": "draw-model", "version": 1, "config": cfg.to_dict(), "epoch": 1,
            "iteration": 1, "model": AttentionClassifier.from_config(cfg).state_dict(),
            "run": {"dataset": "cluttered-mnist"}}
    for key, value, message in (("n_iter", 10 ** 9, "has 1,000,000,000 glimpses, more than "
                                                     "train-classifier.py trains"),
                                ("enc_dim", 10 ** 8, "(500 images at once) needs about")):
        path = tmp_path / f"{key}_model.pkl"
        torch.save({**ckpt, "config": {**ckpt["config"], key: value}}, path)
        out = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), str(path)],
                             capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 1
        assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
        assert message in out.stderr and not out.stdout
    # resumed or exported, it is refused by its config too, before it is built
    with pytest.raises(DrawError, match="the model of .*enc_dim_model.pkl needs about"):
        main(resume=str(tmp_path / "enc_dim_model.pkl"))
    with pytest.raises(DrawError, match="the model of .*enc_dim_model.pkl needs about"):
        export_model(tmp_path / "enc_dim_model.pkl", tmp_path / "exported_model.pkl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc_dim_model.pkl",
                                                           "n_iter_model.pkl"]
    # DRAW's flags are refused, not ignored: the error is always the whole test split's
    good = tmp_path / "good_model.pkl"
    torch.save(ckpt, good)
    with pytest.raises(DrawError, match="^--dataset, --subset: not for a classifier's model"):
        evaluate(str(good), dataset="sample", subset=20, device="cpu")
