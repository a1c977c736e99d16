"""--tensorboard: the event files, read back with TensorBoard's own reader, hold the log's numbers
and the pictures of every epoch, also across a resume; without tensorboard the flag is one line.
"""
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from draw.checkpoint import load_log
from draw.datasets import get_data
from draw.datasets.converted import save_converted
from draw.datasets.registry import REGISTRY
from draw.datasets.store import converted_path
from draw.errors import DrawError
from draw.training.classify import main as train_classifier
from draw.training.draw_job import main
from draw.training.tensorboard import scalar_tag

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason='tensorboard is not installed (pip install -e ".[dev]" installs it)')
TINY = dict(dataset="sample", subset=100, batch_size=50, n_iter=2, enc_dim=8, dec_dim=8,
            z_dim=3, attention="2,3", eval_subset=50, device="cpu", name="tb")


def read_events(run_dir: Path):
    """Every event in `run_dir`, as TensorBoard shows them (earlier sessions' purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})  # 0: all
    events.Reload()
    return events


def assert_events_match(run_dir: Path, rows: list[dict], picture: str, picture_tag: str):
    """One scalar per number of each row at step = its epoch, and each epoch's picture."""
    events = read_events(run_dir)
    # every number but the counters; not the stop request, a flag
    tags = {scalar_tag(key) for row in rows for key, value in row.items()
            if not isinstance(value, bool)} - {None}
    assert set(events.Tags()["scalars"]) == tags
    for tag in tags:
        key = tag.split("/", 1)[1]
        want = [(row["epoch"], row[key]) for row in rows if key in row]
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [step for step, _ in got] == [step for step, _ in want], tag
        # TensorBoard keeps float32
        assert [value for _, value in got] == pytest.approx([v for _, v in want], rel=1e-6), tag
    images = events.Images(picture_tag)
    assert [e.step for e in images] == [row["epoch"] for row in rows]
    for e in images:
        with Image.open(io.BytesIO(e.encoded_image_string)) as shown, \
                Image.open(run_dir / picture.format(epoch=e.step)) as saved:
            assert np.array_equal(np.asarray(shown.convert("RGB")),
                                  np.asarray(saved.convert("RGB")))


@needs_tensorboard
def test_events_hold_the_log_and_the_samples_across_a_resume(tmp_path):
    main(**TINY, epochs=1, run_dir=str(tmp_path), tensorboard=True)
    (run_dir,) = tmp_path.iterdir()
    rows = load_log(run_dir / "tb_log.pkl")
    assert_events_match(run_dir, rows, "epoch-{epoch:03d}.png", "samples")
    tags = set(read_events(run_dir).Tags()["scalars"])
    # what the issue asks for: the bounds, the KL of every step, the norms, the learning rate
    assert {"objective/train_nll_bound", "objective/valid_nll_bound", "objective/test_nll_bound",
            "kl_per_step/train_kl_term_0", "kl_per_step/train_kl_term_1",
            "optimizer/train_total_gradient_norm", "optimizer/train_total_step_norm",
            "optimizer/learning_rate"} <= tags

    # a resumed session writes the whole log again; the reader purges the first session's
    main(resume=str(run_dir), epochs=2, tensorboard=True)
    rows = load_log(run_dir / "tb_log.pkl")
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    assert_events_match(run_dir, rows, "epoch-{epoch:03d}.png", "samples")


@needs_tensorboard
def test_a_classifier_run_shows_its_errors_and_glimpses(tmp_path):
    # a labelled "mnist" of the sample's real digits with random labels, as in
    # test_classifier_train.py; cluttered-mnist is composed from it
    sample, rng = get_data("sample"), np.random.default_rng(0)
    splits = {"train": sample.train[:80].numpy(), "valid": sample.valid[:20].numpy(),
              "test": sample.test[:20].numpy()}
    for split in list(splits):
        splits[f"{split}_labels"] = rng.integers(0, 10, len(splits[split]), dtype=np.uint8)
    save_converted(converted_path("mnist", tmp_path / "data"), REGISTRY["mnist"], splits)
    train_classifier(dataset="cluttered-mnist", n_iter=2, attention=4, enc_dim=8, batch_size=40,
                     epochs=1, device="cpu", data_dir=str(tmp_path / "data"),
                     run_dir=str(tmp_path / "runs"), name="c", tensorboard=True)
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = load_log(run_dir / "c_log.pkl")
    assert_events_match(run_dir, rows, "glimpses-{epoch:03d}.png", "glimpses")
    assert {"objective/train_error", "objective/valid_error", "objective/test_error",
            "optimizer/learning_rate"} <= set(read_events(run_dir).Tags()["scalars"])


def test_without_tensorboard_the_flag_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)       # as if it were not installed
    with pytest.raises(DrawError) as info:
        main(**TINY, epochs=1, run_dir=str(tmp_path), tensorboard=True)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("--tensorboard needs the tensorboard package")
    assert 'pip install -e ".[tensorboard]"' in message
    assert list(tmp_path.iterdir()) == []
