"""export-model.py: a run's model file without its training state, which sample.py, evaluate.py
and --oldmodel read as any model file and --resume refuses; bad input writes nothing."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from draw.checkpoint import load_checkpoint, load_classifier, load_model, save_checkpoint
from draw.classifier import AttentionClassifier, ClassifierConfig
from draw.errors import DrawError
from draw.outputs.sampling import main as sample
from draw.outputs.scores import main as evaluate
from draw.training.draw_job import main as train
from draw.training.export import export_model

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="sample", subset=100, batch_size=50, n_iter=2, enc_dim=8, dec_dim=8,
            z_dim=3, attention="2,3", eval_subset=50, device="cpu")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    parent = tmp_path_factory.mktemp("runs")
    train(**TINY, epochs=2, run_dir=str(parent), name="tiny")
    (path,) = parent.iterdir()
    return path


def test_export_keeps_the_model_and_its_history_not_the_training_state(run_dir, tmp_path):
    out = tmp_path / "pretrained" / "tiny_model.pkl"
    out.parent.mkdir()
    export_model(run_dir, out)
    full = load_checkpoint(run_dir / "tiny_model.pkl")
    model, exported = load_model(out)
    ref, _ = load_model(run_dir / "tiny_model.pkl")
    for (name, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), name
    assert exported["optimizer"] is None and exported["rng"] is None
    assert {"batch", "epoch_rng", "extensions"}.isdisjoint(exported)
    for key in ("config", "run", "epoch", "iteration", "log"):
        assert exported[key] == full[key], key
    # Adam's two moments were two thirds of the file
    assert out.stat().st_size < 0.45 * (run_dir / "tiny_model.pkl").stat().st_size


def test_an_exported_model_samples_evaluates_and_seeds_a_new_run_but_does_not_resume(
        run_dir, tmp_path):
    out = tmp_path / "tiny_model.pkl"
    export_model(run_dir / "tiny_model.pkl", out)
    sample(str(out), n_samples=4, seed=1, output_dir=str(tmp_path / "samples"), device="cpu")
    assert (tmp_path / "samples" / "sequence.gif").stat().st_size > 0
    assert evaluate(str(out), samples=2, subset=20, device="cpu") == \
        evaluate(str(run_dir / "tiny_model.pkl"), samples=2, subset=20, device="cpu")
    with pytest.raises(DrawError, match="exported or foreign model file: start a new run "
                                        "from it with --oldmodel"):
        train(resume=str(out))
    train(**TINY, epochs=1, oldmodel=str(out), run_dir=str(tmp_path / "again"))
    assert len(list((tmp_path / "again").glob("*/tiny_model.pkl"))) == 0   # named by dataset
    assert len(list((tmp_path / "again").glob("*/sample_model.pkl"))) == 1


def test_a_continuation_records_and_chains_what_its_start_was_trained_for(
        run_dir, tmp_path, capsys):
    """--oldmodel from an exported file: the new run's model file, config.json and header say
    how many epochs, steps and hours of training the start had; a resume keeps that, and a
    second continuation adds it up."""
    out = tmp_path / "tiny_model.pkl"
    export_model(run_dir / "tiny_model.pkl", out)
    exported = load_checkpoint(out)
    seconds = sum(row["time_train_this_epoch"] for row in exported["log"] if row["epoch"] > 0)
    train(**TINY, epochs=1, oldmodel=str(out), run_dir=str(tmp_path / "a"), name="a")
    (first,) = (tmp_path / "a").iterdir()
    history = load_checkpoint(first / "a_model.pkl")["started_from"]
    assert history == {"file": str(out), "epochs": 2, "iterations": 4,
                       "train_seconds": pytest.approx(seconds)} and seconds > 0
    assert json.loads((first / "config.json").read_text())["started_from"] == history
    assert f"starts from: {out}, trained 2 epochs (4 steps, " in capsys.readouterr().out
    train(resume=str(first), epochs=2)
    resumed = load_checkpoint(first / "a_model.pkl")
    assert resumed["epoch"] == 2 and resumed["started_from"] == history
    export_model(first, tmp_path / "a_export.pkl")
    train(**TINY, epochs=1, oldmodel=str(tmp_path / "a_export.pkl"),
          run_dir=str(tmp_path / "b"), name="b")
    (second,) = (tmp_path / "b").iterdir()
    chained = load_checkpoint(second / "b_model.pkl")["started_from"]
    assert (chained["epochs"], chained["iterations"]) == (4, 8)
    assert chained["train_seconds"] > history["train_seconds"]
    fresh = load_checkpoint(run_dir / "tiny_model.pkl")
    assert "started_from" not in fresh          # a run from scratch records none
    capsys.readouterr()
    evaluate(str(second / "b_model.pkl"), samples=2, subset=20, device="cpu")
    assert (f"b_model.pkl: epoch 1 + 4 before (started from {tmp_path / 'a_export.pkl'}), "
            in capsys.readouterr().out)


def test_a_classifier_exports_too(tmp_path):
    model = AttentionClassifier.from_config(ClassifierConfig())
    optimizer = torch.optim.Adam(model.parameters())
    src = tmp_path / "c_model.pkl"
    save_checkpoint(src, model, optimizer, run={"dataset": "cluttered-mnist"}, log=[])
    export_model(src, tmp_path / "out_model.pkl")
    exported_model, ckpt = load_classifier(tmp_path / "out_model.pkl")
    assert ckpt["optimizer"] is None and ckpt["run"] == {"dataset": "cluttered-mnist"}
    for a, b in zip(exported_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_bad_input_is_one_line_and_writes_nothing(run_dir, tmp_path):
    own = run_dir / "tiny_model.pkl"
    before = own.read_bytes()
    with pytest.raises(DrawError, match="is the model file being exported"):
        export_model(run_dir, own)
    assert own.read_bytes() == before
    foreign = tmp_path / "foreign.pkl"
    foreign.write_bytes(b"not a model")
    for source, message in ((foreign, "foreign.pkl"), (tmp_path / "nowhere", "no such run "
                                                       "directory or model file")):
        result = subprocess.run([sys.executable, str(ROOT / "export-model.py"), str(source),
                                 str(tmp_path / "out_model.pkl")], capture_output=True, text=True)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith("error: ") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out_model.pkl").exists()


def test_an_export_replaces_an_exported_file_and_nothing_else(run_dir, tmp_path):
    shipped = tmp_path / "shipped_model.pkl"
    export_model(run_dir, shipped)
    export_model(run_dir, shipped)                 # a shipped model replaced by its successor
    assert load_checkpoint(shipped)["optimizer"] is None
    log = run_dir / "tiny_log.pkl"
    other_run = tmp_path / "other_model.pkl"
    other_run.write_bytes((run_dir / "tiny_model.pkl").read_bytes())
    for kept, message in ((log, "exists and is not a model file"),
                          (tmp_path, "exists and is not a model file"),
                          (other_run, "is a run's model file")):
        before = kept.read_bytes() if kept.is_file() else None
        with pytest.raises(DrawError, match=message):
            export_model(run_dir, kept)
        if before is not None:
            assert kept.read_bytes() == before


def test_half_stores_float16_that_loads_as_the_rounded_float32(run_dir, tmp_path):
    full, half = tmp_path / "full_model.pkl", tmp_path / "half_model.pkl"
    export_model(run_dir, full)
    result = subprocess.run([sys.executable, str(ROOT / "export-model.py"), str(run_dir),
                             str(half), "--half"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "parameters as float16 after epoch 2" in result.stdout
    stored = load_checkpoint(half)["model"]
    assert {t.dtype for t in stored.values()} == {torch.float16}
    model, _ = load_model(half)
    ref, _ = load_model(full)
    for (name, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert a.dtype == torch.float32 and torch.equal(a, b.half().float()), name
        assert torch.allclose(a, b, rtol=2 ** -11, atol=2 ** -25), name
    # two bytes saved per parameter: the tiny model's file is mostly its log and config
    saved = full.stat().st_size - half.stat().st_size
    assert saved >= 2 * sum(t.numel() for t in stored.values()) - 64
    bounds = [evaluate(str(path), samples=2, subset=20, device="cpu") for path in (full, half)]
    assert bounds[0] != bounds[1] and bounds[0] == pytest.approx(bounds[1], abs=0.01)


def test_half_refuses_a_parameter_float16_cannot_hold(tmp_path):
    model = AttentionClassifier.from_config(ClassifierConfig())
    with torch.no_grad():
        next(model.parameters())[0] = 1e5
    src = tmp_path / "c_model.pkl"
    save_checkpoint(src, model, run={"dataset": "cluttered-mnist"}, log=[])
    with pytest.raises(DrawError, match=r"parameter \S+ holds values beyond float16's range"):
        export_model(src, tmp_path / "out_model.pkl", half=True)
    assert not (tmp_path / "out_model.pkl").exists()
    export_model(src, tmp_path / "out_model.pkl")       # float32 holds it
