"""Extensions: trigger dispatch with a mock loop, then what each extension records or writes."""
import os
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from draw.checkpoint import load_log, load_model
from draw.datasets import batches
from draw.model import DrawConfig, DrawModel, nll_bound
from draw.training.distributed import Distributed
from draw.training.extensions import (Checkpoint, DataStreamMonitoring, FinishAfter,
                                      LearningRateSchedule, Plot, Printing, ProgressBar,
                                      SampleCheckpoint, SimpleExtension, Timing,
                                      TrainingDataMonitoring)
from draw.training.main_loop import MainLoop
from draw.training.task import DrawTask

CFG = DrawConfig(channels=1, height=8, width=8, n_iter=3, enc_dim=6, dec_dim=5, z_dim=2,
                 read_N=2, write_N=3)


class MockMainLoop:
    """What extensions see of a MainLoop (Blocks' MockMainLoop): status, log, model."""

    def __init__(self, model=None, fresh=True):
        self.status = {"epoch": 0, "iteration": 0, "batch": 0, "finish_requested": False,
                       "interrupted": False}
        self.log = [{"epoch": 0, "iteration": 0}]
        self.model = model
        self.task = None if model is None else DrawTask(model)
        self.dist = Distributed()
        self.last_batch = {}
        self._fresh = fresh

    @property
    def fresh(self):
        return self._fresh

    def attach(self, *extensions):
        for extension in extensions:
            extension.main_loop = self
        return extensions


def simulate(loop, extensions, epochs=2, batches=3, error=None):
    """Fire the events of a MainLoop run in its order."""
    for e in extensions:
        e.before_training()
    for _ in range(epochs):
        for e in extensions:
            e.before_epoch()
        for _ in range(batches):
            loop.status["iteration"] += 1
            loop.status["batch"] += 1
            for e in extensions:
                e.after_batch()
        loop.status["epoch"] += 1
        loop.status["batch"] = 0
        loop.log.append({"epoch": loop.status["epoch"], "iteration": loop.status["iteration"]})
        for e in extensions:
            e.after_epoch()
    for e in extensions:
        e.on_error(error) if error is not None else e.after_training()


class Recorder(SimpleExtension):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    def do(self, which_callback, *args):
        status = self.main_loop.status
        self.calls.append((which_callback, status["epoch"], status["iteration"], *args))


def test_triggers_funnel_into_do():
    loop = MockMainLoop()
    every_epoch, every_2_batches, every_2_epochs, first, edges = loop.attach(
        Recorder(after_epoch=True), Recorder(every_n_batches=2), Recorder(every_n_epochs=2),
        Recorder(before_first_epoch=True),
        Recorder(before_training=True, before_epoch=True, after_training=True))
    simulate(loop, [every_epoch, every_2_batches, every_2_epochs, first, edges])
    assert every_epoch.calls == [("after_epoch", 1, 3), ("after_epoch", 2, 6)]
    assert every_2_batches.calls == [("after_batch", 0, 2), ("after_batch", 1, 4),
                                     ("after_batch", 1, 6)]
    assert every_2_epochs.calls == [("after_epoch", 2, 6)]
    assert first.calls == [("before_first_epoch", 0, 0)]
    assert edges.calls == [("before_training", 0, 0), ("before_epoch", 0, 0),
                           ("before_epoch", 1, 3), ("after_training", 2, 6)]


def test_before_first_epoch_is_skipped_on_resume_and_errors_reach_on_error():
    loop = MockMainLoop(fresh=False)
    first, errors = loop.attach(Recorder(before_first_epoch=True), Recorder(on_error=True))
    boom = RuntimeError("boom")
    simulate(loop, [first, errors], epochs=1, error=boom)
    assert first.calls == []
    assert errors.calls == [("on_error", 1, 3, boom)]


def test_trigger_defaults_can_be_overridden_and_typos_are_refused():
    assert Printing().triggers == {"before_first_epoch", "after_epoch"}
    assert Printing(after_epoch=False).triggers == {"before_first_epoch"}
    with pytest.raises(TypeError, match="after_epochs"):
        Recorder(after_epochs=True)


def test_training_data_monitoring_averages_over_images_and_batches():
    loop = MockMainLoop()
    (monitor,) = loop.attach(TrainingDataMonitoring())
    batches = [  # (per-image bounds, per-step KL (T=2, B), gradient norm, step norm)
        (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[1.0, 1.0, 1.0], [0.0, 3.0, 6.0]]), 4.0, 0.5),
        (torch.tensor([10.0]), torch.tensor([[5.0], [1.0]]), 2.0, 1.5),
    ]
    for bound, kl, g, s in batches:
        # what MainLoop.step leaves: the task's sums over the (global) batch and its size
        loop.last_batch = {"loss": bound.mean(),
                           "sums": {"nll_bound": bound.sum(), "kl_term": kl.sum(dim=1),
                                    "examples": torch.tensor(float(bound.numel()))},
                           "total_gradient_norm": torch.tensor(g),
                           "total_step_norm": torch.tensor(s)}
        monitor.after_batch()
    loop.log.append({"epoch": 1, "iteration": 2})
    monitor.after_epoch()
    assert loop.log[-1] == {"epoch": 1, "iteration": 2, "train_nll_bound": 16.0 / 4,
                            "train_kl_term_0": 8.0 / 4, "train_kl_term_1": 10.0 / 4,
                            "train_total_gradient_norm": 3.0, "train_total_step_norm": 1.0}
    # the next epoch starts from zero
    monitor.after_batch()
    loop.log.append({"epoch": 2, "iteration": 3})
    monitor.after_epoch()
    assert loop.log[-1]["train_nll_bound"] == 10.0


def test_training_data_monitoring_state_survives_a_mid_epoch_resume():
    def feed(monitor, values):
        for v in values:
            monitor.main_loop.last_batch = {
                "loss": torch.tensor(1.5 * v),
                "sums": {"nll_bound": torch.tensor(3 * v), "kl_term": torch.tensor([2 * v]),
                         "examples": torch.tensor(2.0)},
                "total_gradient_norm": torch.tensor(v), "total_step_norm": torch.tensor(1.0)}
            monitor.after_batch()

    model = DrawModel.from_config(CFG)
    whole, first, second = MockMainLoop(model), MockMainLoop(model), MockMainLoop(model)
    (a,), (b,), (c,) = whole.attach(TrainingDataMonitoring()), \
        first.attach(TrainingDataMonitoring()), second.attach(TrainingDataMonitoring())
    feed(a, [0.1, 0.7, 0.3])
    feed(b, [0.1, 0.7])
    c.load_state_dict(b.state_dict())
    feed(c, [0.3])
    for loop, monitor in ((whole, a), (second, c)):
        loop.log.append({"epoch": 1, "iteration": 3})
        monitor.after_epoch()
    assert whole.log[-1] == second.log[-1]


def tiny_images(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, CFG.x_dim), generator=g, dtype=torch.uint8)


def test_data_stream_monitoring_matches_a_direct_computation():
    torch.manual_seed(0)
    model = DrawModel.from_config(CFG)
    loop = MockMainLoop(model)
    images = tiny_images()
    (monitor,) = loop.attach(DataStreamMonitoring(lambda: batches(images, 3), "valid",
                                                  device="cpu", seed=4))
    rng_before = torch.get_rng_state()
    monitor.before_training()
    row = loop.log[-1]
    assert torch.equal(torch.get_rng_state(), rng_before)   # draws nothing from training's RNG
    assert model.training
    # reference: the same noise, one batch of 3, 3 and 1 images at a time
    g = torch.Generator().manual_seed(4)
    bounds, kls = [], []
    with torch.no_grad():
        for x in (images.float() / 255).split(3):
            u = torch.randn((CFG.n_iter, x.shape[0], CFG.z_dim), generator=g)
            c, kl = model(x, u)
            bounds.append(nll_bound(x, c, kl))
            kls.append(kl)
    assert row["valid_nll_bound"] == pytest.approx(torch.cat(bounds).mean().item(), rel=1e-6)
    kl_mean = torch.cat(kls, dim=1).mean(dim=1)
    for t in range(CFG.n_iter):
        assert row[f"valid_kl_term_{t}"] == pytest.approx(kl_mean[t].item(), rel=1e-5)
    assert not any(key.startswith("train") for key in row)
    # the same noise at every evaluation: an unchanged model gets the same numbers
    loop.log.append({"epoch": 1, "iteration": 1})
    monitor.after_epoch()
    assert loop.log[-1]["valid_nll_bound"] == row["valid_nll_bound"]


def test_timing_and_finish_after():
    loop = MockMainLoop()
    timing, finish = loop.attach(Timing(), FinishAfter(after_n_epochs=2))
    simulate(loop, [timing, finish], epochs=1)
    assert not loop.status["finish_requested"]
    row = loop.log[-1]
    assert 0 <= row["time_train_this_epoch"] <= row["time_total"]
    simulate(loop, [timing, finish], epochs=1)
    assert loop.status["finish_requested"] and loop.log[-1]["training_finish_requested"]
    assert "training_finish_requested" not in loop.log[-2]

    by_batches = MockMainLoop()
    (finish,) = by_batches.attach(FinishAfter(after_n_batches=4))
    simulate(by_batches, [finish], epochs=1, batches=3)
    assert not by_batches.status["finish_requested"]
    simulate(by_batches, [finish], epochs=1, batches=1)
    assert by_batches.status["finish_requested"]

    done = MockMainLoop(fresh=False)     # resumed with as many epochs as asked for
    done.status["epoch"] = 2
    (finish,) = done.attach(FinishAfter(after_n_epochs=2))
    finish.before_training()
    assert done.status["finish_requested"]


def test_learning_rate_schedule_sets_each_step_and_continues_after_a_resume():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    seen = []

    class Step(SimpleExtension):       # what the optimizer holds when step i is taken
        def do(self, which_callback, *args):
            seen.append(optimizer.param_groups[0]["lr"])

    def run(loop, epochs):
        schedule = LearningRateSchedule(optimizer, 0.01, warmup=4, decay=0.5,
                                        batches_per_epoch=3)
        step = Step(before_epoch=True)
        loop.attach(schedule, step)
        # the step of each batch happens before after_batch: record it in a batch's place
        for e in (schedule, step):
            e.before_training()
        for _ in range(epochs):
            for _ in range(3):
                step.do("step")
                loop.status["iteration"] += 1
                schedule.after_batch()
            loop.status["epoch"] += 1
            loop.log.append({"epoch": loop.status["epoch"], "iteration": loop.status["iteration"]})
            schedule.after_epoch()
        return schedule

    loop = MockMainLoop()
    schedule = run(loop, epochs=2)
    # steps 0..5: warm-up (i + 1) / 4 up to step 3, then halved from the second epoch on
    expected = [0.01 * 1 / 4, 0.01 * 2 / 4, 0.01 * 3 / 4, 0.01 * 0.5, 0.01 * 0.5, 0.01 * 0.5]
    assert seen == pytest.approx(expected, rel=1e-15)
    assert "learning_rate" not in loop.log[0]                 # the row before training
    assert [row["learning_rate"] for row in loop.log[1:]] == pytest.approx([0.0075, 0.005],
                                                                          rel=1e-15)
    assert optimizer.param_groups[0]["lr"] == schedule.rate(6) == 0.01 * 0.25

    # a new process resuming after step 4 (mid-epoch): the same rates, nothing saved
    seen.clear()
    optimizer.param_groups[0]["lr"] = 123.0          # what a stale optimizer state would hold
    resumed = MockMainLoop(fresh=False)
    resumed.status.update(iteration=4, epoch=1)
    run(resumed, epochs=1)
    assert seen[0] == pytest.approx(0.005, rel=1e-15)

    constant = LearningRateSchedule(optimizer, 3e-4, batches_per_epoch=3)
    assert {constant.rate(i) for i in range(100)} == {3e-4}    # exactly, as without a schedule


def real_loop(tmp_path):
    torch.manual_seed(0)
    model = DrawModel.from_config(CFG)
    optimizer = torch.optim.Adam(model.parameters())
    images = tiny_images(6)
    generator = torch.Generator().manual_seed(0)
    return MainLoop(DrawTask(model), optimizer, lambda: [images[:3].float() / 255], generator)


def test_checkpoint_writes_loadable_files_and_skips_an_unchanged_state(tmp_path):
    loop = real_loop(tmp_path)
    (checkpoint,) = [Checkpoint(tmp_path, "tiny", run={"dataset": "fake"})]
    loop.extensions = [checkpoint]
    checkpoint.main_loop = loop
    loop.log = [{"epoch": 0, "iteration": 0, "test_nll_bound": 44.0}]
    checkpoint.before_training()
    model_file, log_file = tmp_path / "tiny_model.pkl", tmp_path / "tiny_log.pkl"
    assert load_log(log_file) == loop.log
    model, ckpt = load_model(model_file)
    assert ckpt["run"] == {"dataset": "fake"} and ckpt["log"] == loop.log
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["batch"]) == (0, 0, 0)
    for a, b in zip(model.parameters(), loop.model.parameters()):
        assert torch.equal(a, b)
    inode = os.stat(model_file).st_ino
    checkpoint.after_training()               # nothing happened since: not rewritten
    assert os.stat(model_file).st_ino == inode
    loop.status.update(iteration=1, batch=1)  # stopped mid-epoch: saved again
    checkpoint.after_training()
    assert os.stat(model_file).st_ino != inode
    assert load_model(model_file)[1]["batch"] == 1


def test_sample_checkpoint_files(tmp_path):
    torch.manual_seed(0)
    model = DrawModel.from_config(CFG)
    loop = MockMainLoop(model)
    (samples,) = loop.attach(SampleCheckpoint(tmp_path, (1, 8, 8), n=6, seed=3))
    rng_before = torch.get_rng_state()
    samples.before_training()
    first = (tmp_path / "sample.png").read_bytes()
    assert first == (tmp_path / "epoch-000.png").read_bytes()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    loop.status["epoch"] = 1
    samples.after_epoch()
    assert (tmp_path / "sample.png").read_bytes() == (tmp_path / "epoch-001.png").read_bytes()
    assert torch.equal(torch.get_rng_state(), rng_before)   # fixed noise of its own
    with Image.open(tmp_path / "epoch-001.png") as grid:
        assert grid.size == (3 * 8 + 2, 2 * 8 + 1)         # 6 samples in a 2 x 3 grid
    with Image.open(tmp_path / "training.gif") as gif:
        assert gif.n_frames == 2
        for k, png in enumerate(("epoch-000.png", "epoch-001.png")):
            gif.seek(k)
            with Image.open(tmp_path / png) as expected:
                assert np.array_equal(np.asarray(gif.convert("L")), np.asarray(expected))
    with Image.open(tmp_path / "sequence.gif") as gif:
        assert 1 <= gif.n_frames <= CFG.n_iter
        assert gif.size == (3 * 16 + 2, 2 * 16 + 1)         # drawn at twice the size
    # the same model and seed draw the same samples
    samples.after_epoch()
    assert (tmp_path / "sample.png").read_bytes() == (tmp_path / "epoch-001.png").read_bytes()


def test_printing_one_line_per_epoch(capsys):
    loop = MockMainLoop()
    (printing,) = loop.attach(Printing())
    loop.log[0].update(valid_nll_bound=543.4321)
    printing.before_training()
    loop.log.append({"epoch": 1, "iteration": 3, "train_nll_bound": 101.256,
                     "valid_nll_bound": 99.5, "test_nll_bound": 98.25,
                     "train_total_gradient_norm": 5.5, "train_total_step_norm": 0.01,
                     "time_train_this_epoch": 12.34, "train_kl_term_0": 1.0})
    printing.after_epoch()
    assert capsys.readouterr().out.splitlines() == [
        "epoch   0 | iter       0 | valid 543.43",
        "epoch   1 | iter       3 | train 101.26 | valid 99.50 | test 98.25 | |grad| 5.5 | "
        "|step| 0.01 | 12.3 s"]


def test_progress_bar_counts_the_epoch_and_resumes_mid_epoch(terminal):
    loop = MockMainLoop()
    (progress,) = loop.attach(ProgressBar(batches_per_epoch=4))
    loop.last_batch = {"loss": torch.tensor(3.0)}
    terminal()
    progress.before_epoch()
    for _ in range(3):
        progress.after_batch()
    assert (progress.bar.n, progress.bar.total, progress.bar.desc) == (3, 4, "epoch 1")
    progress.after_training()
    assert progress.bar is None
    loop.status.update(epoch=2, batch=3)      # resumed after 3 batches of the third epoch
    progress.before_epoch()
    assert (progress.bar.n, progress.bar.desc) == (3, "epoch 3")
    progress.after_epoch()
    assert progress.bar is None


def test_plain_progress_lines_where_stderr_is_not_a_terminal(capsys):
    loop = MockMainLoop()
    (progress,) = loop.attach(ProgressBar(batches_per_epoch=25))
    loop.status.update(epoch=4, batch=13)     # resumed after 13 batches of the fifth epoch
    progress.before_epoch()
    assert progress.bar is None
    for loss in range(1, 13):                 # batch 14's loss is 1, batch 15's 2, ...
        loop.last_batch = {"loss": torch.tensor(float(loss))}
        loop.status["batch"] += 1
        progress.after_batch()
    progress.after_epoch()
    progress.after_batch()                    # outside an epoch: nothing
    captured = capsys.readouterr()
    assert captured.err == ""
    # every tenth of the epoch (every 2nd batch of 25), none at its end: the epoch line is there
    lines = captured.out.splitlines()
    assert [line.split(" | ")[0] for line in lines] == [
        f"  epoch 5: batch {b}/25" for b in (14, 16, 18, 20, 22, 24)]
    # the last batch's loss, and the mean of the rest of the epoch's so far: 1..k averages
    # (k + 1) / 2
    assert [line.split(" | ")[1] for line in lines] == [
        f"loss {k:.2f}, mean {(k + 1) / 2:.2f}" for k in (1, 3, 5, 7, 9, 11)]
    assert all(line.endswith(" s") for line in lines)
    # the next epoch's mean starts afresh
    loop.status.update(epoch=5, batch=0)
    progress.before_epoch()
    for _ in range(2):
        loop.last_batch = {"loss": torch.tensor(40.0)}
        loop.status["batch"] += 1
        progress.after_batch()
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("  epoch 6: batch 2/25 | loss 40.00, mean 40.00 | ")


def test_plot_feeds_the_live_page_and_survives_a_failed_start(tmp_path, monkeypatch):
    calls = []

    class FakeLivePlot:
        url = "http://127.0.0.1:5006/"

        def __init__(self, host, port):
            calls.append(("init", host, port))

        def start(self):
            calls.append(("start",))
            return self.url

        def update(self, rows, samples=None):
            calls.append(("update", len(rows), None if samples is None else samples.size))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "draw.outputs.live", types.SimpleNamespace(LivePlot=FakeLivePlot))
    Image.new("L", (5, 4)).save(tmp_path / "sample.png")
    loop = MockMainLoop()
    (plot,) = loop.attach(Plot(tmp_path, port=5123))
    simulate(loop, [plot], epochs=1)
    assert calls == [("init", "127.0.0.1", 5123), ("start",), ("update", 1, (5, 4)),
                     ("update", 2, (5, 4)), ("close",)]

    calls.clear()
    FakeLivePlot.url = None           # the port was taken: LivePlot warned and gave up
    loop = MockMainLoop()
    (plot,) = loop.attach(Plot(tmp_path))
    simulate(loop, [plot], epochs=1)
    assert calls == [("init", "127.0.0.1", 5006), ("start",)]


def test_training_data_monitoring_reads_the_state_of_older_checkpoints():
    """A checkpoint saved mid-epoch before tasks existed named its sums nll_bound_sum and
    kl_sum and kept the image count apart: a resumed run finishes the epoch from them."""
    loop = MockMainLoop(DrawModel.from_config(CFG))
    (monitor,) = loop.attach(TrainingDataMonitoring())
    f64 = dict(dtype=torch.float64)
    monitor.load_state_dict({"sums": {"nll_bound_sum": torch.tensor(30.0, **f64),
                                      "kl_sum": torch.tensor([4.0, 2.0], **f64),
                                      "total_gradient_norm": torch.tensor(6.0, **f64),
                                      "total_step_norm": torch.tensor(1.0, **f64)},
                             "images": 10, "batches": 2})
    loop.log.append({"epoch": 1, "iteration": 2})
    monitor.after_epoch()
    assert loop.log[-1] == {"epoch": 1, "iteration": 2, "train_nll_bound": 3.0,
                            "train_kl_term_0": 0.4, "train_kl_term_1": 0.2,
                            "train_total_gradient_norm": 3.0, "train_total_step_norm": 0.5}
