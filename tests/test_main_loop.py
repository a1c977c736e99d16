"""MainLoop: event order, the update step, non-finite stops, Ctrl-C, exact mid-epoch resume,
and a task that is not DRAW's trained by the same loop."""
import copy
import signal

import pytest
import torch
from torch.nn.utils import clip_grad_norm_

from draw.bricks import AttentionReader
from draw.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from draw.datasets import batches
from draw.model import DrawConfig, DrawModel, nll_bound
from draw.training.extensions import (DataStreamMonitoring, FinishAfter, SimpleExtension,
                                      TrainingDataMonitoring)
from draw.training.main_loop import MainLoop, TrainingError, adam, load_adam_state
from draw.training.task import DrawTask

CFG = DrawConfig(channels=1, height=8, width=8, n_iter=3, enc_dim=6, dec_dim=5, z_dim=2)
IMAGES = torch.randint(0, 256, (10, CFG.x_dim), generator=torch.Generator().manual_seed(0),
                       dtype=torch.uint8)


class Events(SimpleExtension):
    """Records every event the loop fires, and can act at a given iteration."""

    def __init__(self, at_iteration=None, action=None):
        super().__init__()
        self.seen, self.at_iteration, self.action = [], at_iteration, action

    def do(self, which_callback, *args):
        raise AssertionError("Events overrides the event methods themselves")

    def before_training(self):
        self.seen.append("before_training")

    def before_epoch(self):
        self.seen.append("before_epoch")

    def after_batch(self):
        self.seen.append("after_batch")
        if self.main_loop.status["iteration"] == self.at_iteration:
            self.action()

    def after_epoch(self):
        self.seen.append("after_epoch")

    def after_training(self):
        self.seen.append("after_training")

    def on_error(self, exception):
        self.seen.append(("on_error", type(exception).__name__))


def make_loop(extensions, seed=0, data_seed=0, batch_size=4, grad_clip=10.0,
              optimizer=torch.optim.Adam):
    torch.manual_seed(seed)
    model = DrawModel.from_config(CFG)
    optimizer = optimizer(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(data_seed)
    # shuffled and dynamically binarized: both drawn from the data generator
    epoch = lambda: batches(IMAGES, batch_size, generator=generator, binarize=True)  # noqa: E731
    return MainLoop(DrawTask(model), optimizer, epoch, generator, extensions, grad_clip=grad_clip)


def test_events_fire_in_order_and_the_log_has_a_row_per_epoch():
    events = Events()
    loop = make_loop([events, FinishAfter(after_n_epochs=2)], batch_size=5)
    loop.run()
    epoch = ["before_epoch", "after_batch", "after_batch", "after_epoch"]
    assert events.seen == ["before_training", *epoch, *epoch, "after_training"]
    assert [(row["epoch"], row["iteration"]) for row in loop.log] == [(0, 0), (1, 2), (2, 4)]
    assert loop.log[-1]["training_finish_requested"]


def test_step_is_clipped_adam_on_the_mean_bound():
    loop = make_loop([], grad_clip=0.5)
    reference = copy.deepcopy(loop.model)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    x = IMAGES[:4].float() / 255
    for _ in range(2):
        before = [p.detach().clone() for p in reference.parameters()]
        torch.manual_seed(7)
        loop.step(x)
        torch.manual_seed(7)
        ref_opt.zero_grad()
        nll_bound(x, *reference(x)).mean().backward()
        grad_norm = clip_grad_norm_(reference.parameters(), 0.5)
        ref_opt.step()
        for a, b in zip(loop.model.parameters(), reference.parameters()):
            assert torch.equal(a, b)
        step = torch.cat([(p.detach() - b).flatten()
                          for p, b in zip(reference.parameters(), before)])
        assert loop.last_batch["total_gradient_norm"].item() == pytest.approx(grad_norm.item())
        assert grad_norm > 0.5          # the clip was active
        assert loop.last_batch["total_step_norm"].item() == pytest.approx(step.norm().item(),
                                                                         rel=1e-5)


def test_non_finite_loss_stops_before_the_update():
    events = Events()
    loop = make_loop([events])
    before = [p.detach().clone() for p in loop.model.parameters()]
    bad = IMAGES[:2].float() / 255
    bad[0, 3] = float("nan")
    loop.epoch_batches = lambda: [bad]
    with pytest.raises(TrainingError) as info:
        loop.run()
    assert "non-finite" in str(info.value) and "\n" not in str(info.value)
    for a, b in zip(loop.model.parameters(), before):
        assert torch.equal(a, b)
    assert events.seen[-1] == ("on_error", "TrainingError")
    assert "after_training" not in events.seen


def test_first_ctrl_c_finishes_the_batch_and_runs_after_training():
    handler = signal.getsignal(signal.SIGINT)
    events = Events(at_iteration=4, action=lambda: signal.raise_signal(signal.SIGINT))
    loop = make_loop([events, FinishAfter(after_n_epochs=5)])
    loop.run()
    # 3 batches per epoch: the interrupt came after the first batch of the second epoch
    assert (loop.status["epoch"], loop.status["iteration"], loop.status["batch"]) == (1, 4, 1)
    assert loop.status["interrupted"]
    assert events.seen[-3:] == ["before_epoch", "after_batch", "after_training"]
    assert signal.getsignal(signal.SIGINT) is handler


def test_second_ctrl_c_stops_at_once():
    def two_interrupts():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)

    events = Events(at_iteration=2, action=two_interrupts)
    loop = make_loop([events, FinishAfter(after_n_epochs=5)])
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    assert events.seen[-1] == ("on_error", "KeyboardInterrupt")
    assert "after_training" not in events.seen


def untimed(log):
    return [{k: v for k, v in row.items() if not k.startswith("time")} for row in log]


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    whole = make_loop([FinishAfter(after_n_epochs=3), TrainingDataMonitoring()])
    whole.run()

    # the same run, stopped (as by Ctrl-C) after 2 of the second epoch's 3 batches ...
    def stop():
        first.status["interrupted"] = True

    first = make_loop([Events(at_iteration=5, action=stop), FinishAfter(after_n_epochs=3),
                       TrainingDataMonitoring()])
    first.run()
    assert (first.status["epoch"], first.status["batch"]) == (1, 2)
    save_checkpoint(tmp_path / "m.pkl", first.model, first.optimizer,
                    rng=rng_state(first.generator), **first.state_dict())
    del first
    torch.rand(100)      # whatever happens in between must not matter

    # ... and continued by a new process's worth of objects, built from other seeds
    ckpt = load_checkpoint(tmp_path / "m.pkl")
    second = make_loop([Events(), FinishAfter(after_n_epochs=3), TrainingDataMonitoring()],
                       seed=1, data_seed=1)
    second.model.load_state_dict(ckpt["model"])
    second.optimizer.load_state_dict(ckpt["optimizer"])
    second.load_state_dict(ckpt)
    set_rng_state(ckpt["rng"], second.generator)
    second.run()

    assert second.status["iteration"] == whole.status["iteration"] == 9
    for a, b in zip(whole.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    assert untimed(second.log) == untimed(whole.log)
    assert "train_nll_bound" in second.log[2]


class ScaledReader(AttentionReader):
    """A researcher's reader: the glimpse times a learned gain, a parameter the stock reader
    lacks. Training must use this forward pass, so the gain gets a gradient."""

    def __init__(self, *args):
        super().__init__(*args)
        self.gain = torch.nn.Parameter(torch.tensor(1.5))

    def forward(self, x, x_hat, h_dec):
        return self.gain * super().forward(x, x_hat, h_dec)


def test_a_subclassed_reader_trains_with_its_own_maths():
    """Through the real training step (DrawTask, MainLoop.step): the extra parameter gets the
    gradient of the subclass's own forward pass, and every parameter moves as plain SGD on
    that model's bound says."""
    cfg = DrawConfig(channels=1, height=8, width=8, n_iter=3, enc_dim=6, dec_dim=5, z_dim=2,
                     read_N=2, write_N=3)
    torch.manual_seed(0)
    model = DrawModel.from_config(cfg)
    model.reader = ScaledReader(cfg.x_dim, cfg.dec_dim, 1, 8, 8, 2)
    with torch.no_grad():       # weights large enough that the reader's output matters
        for p in model.parameters():
            p.normal_(0.0, 0.3)
        model.reader.gain.fill_(1.5)
    reference = copy.deepcopy(model)
    loop = MainLoop(DrawTask(model), torch.optim.SGD(model.parameters(), lr=0.1),
                    grad_clip=1e9)
    x = IMAGES[:4].float() / 255
    torch.manual_seed(3)
    loop.step(x)
    torch.manual_seed(3)
    nll_bound(x, *reference(x)).mean().backward()
    assert reference.reader.gain.grad.abs() > 1e-2
    for (name, p), ref in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, ref - 0.1 * ref.grad, msg=name)
    assert model.reader.gain.item() != 1.5


class Regression:
    """A task that is not DRAW: least squares of a linear map, monitored by its error in
    percent of examples off by more than 0.5 (a classifier's shape of numbers)."""

    def __init__(self, model):
        from draw.training.distributed import Distributed
        self.model = self.module = model
        self.dist = Distributed()

    def loss(self, batch):
        x, y = batch
        residual = self.model(x).squeeze(1) - y                              # (B,)
        squared, wrong = residual ** 2, residual.abs() > 0.5
        return squared.mean(), {"squared_error": squared.detach().sum(),
                                "error": 100.0 * wrong.double().sum(),
                                "examples": torch.tensor(float(x.shape[0]))}

    def evaluate(self, data, generator):
        sums = torch.zeros(2, dtype=torch.float64)
        for x, y in data:
            with torch.no_grad():
                sums += torch.tensor([((self.model(x).squeeze(1) - y).abs() > 0.5).sum() * 100.0,
                                      x.shape[0]])
        return {"error": (sums[0] / sums[1]).item()}


def test_the_loop_and_its_monitors_train_a_task_that_is_not_draw():
    torch.manual_seed(0)
    x = torch.randn(40, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    model = torch.nn.Linear(3, 1)
    data = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)]
    task = Regression(model)
    monitor = DataStreamMonitoring(lambda: data, "valid", "cpu")
    loop = MainLoop(task, torch.optim.SGD(model.parameters(), lr=0.1), lambda: data,
                    extensions=[FinishAfter(after_n_epochs=20), TrainingDataMonitoring(), monitor])
    loop.run()
    first, last = loop.log[1], loop.log[-1]
    assert set(first) >= {"train_squared_error", "train_error", "valid_error",
                          "train_total_gradient_norm"}
    assert not any("nll" in key or "kl" in key for key in first)
    # train_squared_error is the epoch's mean over examples, as the task's sums say
    assert last["train_squared_error"] < 0.01 < first["train_squared_error"]
    assert last["valid_error"] == 0.0 < loop.log[0]["valid_error"]


def test_adam_is_fused_and_takes_an_unfused_checkpoints_state():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))

    def step(optimizer):
        optimizer.zero_grad()
        (w ** 2).sum().backward()
        optimizer.step()

    old = torch.optim.Adam([w], lr=1e-3)          # as runs made it before fused Adam
    for _ in range(3):
        step(old)
    state = copy.deepcopy(old.state_dict())
    assert state["param_groups"][0]["fused"] is None
    new = adam([w], lr=1e-3)
    load_adam_state(new, state)
    assert new.param_groups[0]["fused"] is True
    assert new.state_dict()["param_groups"][0]["fused"] is True
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(new.state[w][key], old.state[w][key]), key
    # the next step from the same state: the same update up to float32 rounding
    start = w.detach().clone()
    step(old)
    unfused = w.detach().clone()
    w.data.copy_(start)
    step(new)
    assert not torch.equal(w, start)
    torch.testing.assert_close(w.detach(), unfused, rtol=1e-6, atol=1e-8)
