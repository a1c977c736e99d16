"""MainLoop: event order, the update step, non-finite stops, Ctrl-C, exact mid-epoch resume."""
import copy
import signal

import pytest
import torch
from torch.nn.utils import clip_grad_norm_

from draw.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from draw.datasets import batches
from draw.training.extensions import FinishAfter, SimpleExtension, TrainingDataMonitoring
from draw.fast import accelerate
from draw.training.main_loop import MainLoop, TrainingError
from draw.model import DrawConfig, DrawModel, nll_bound

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


def make_loop(extensions, seed=0, data_seed=0, batch_size=4, grad_clip=10.0, fast=False,
              optimizer=torch.optim.Adam):
    torch.manual_seed(seed)
    model = DrawModel.from_config(CFG)
    optimizer = optimizer(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(data_seed)
    # shuffled and dynamically binarized: both drawn from the data generator
    epoch = lambda: batches(IMAGES, batch_size, generator=generator, binarize=True)  # noqa: E731
    return MainLoop(model, optimizer, epoch, generator, extensions, grad_clip=grad_clip,
                    fast=accelerate(model) if fast else None)


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


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_resume_mid_epoch_is_bit_identical(tmp_path, fast):
    whole = make_loop([FinishAfter(after_n_epochs=3), TrainingDataMonitoring()], fast=fast)
    whole.run()

    # the same run, stopped (as by Ctrl-C) after 2 of the second epoch's 3 batches ...
    def stop():
        first.status["interrupted"] = True

    first = make_loop([Events(at_iteration=5, action=stop), FinishAfter(after_n_epochs=3),
                       TrainingDataMonitoring()], fast=fast)
    first.run()
    assert (first.status["epoch"], first.status["batch"]) == (1, 2)
    save_checkpoint(tmp_path / "m.pkl", first.model, first.optimizer,
                    rng=rng_state(first.generator), **first.state_dict())
    del first
    torch.rand(100)      # whatever happens in between must not matter

    # ... and continued by a new process's worth of objects, built from other seeds
    ckpt = load_checkpoint(tmp_path / "m.pkl")
    second = make_loop([Events(), FinishAfter(after_n_epochs=3), TrainingDataMonitoring()],
                       seed=1, data_seed=1, fast=fast)
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


def test_the_fast_path_trains_as_the_plain_one():
    """The same run through draw.fast: the same steps up to float rounding, and the loop's
    forward (what monitoring calls) is the fast callable, sharing the model's parameters."""
    loops = []
    for fast in (False, True):
        # built and run in turn: each run's noise is drawn from the seed make_loop sets
        # SGD, not Adam: Adam's step is about lr whatever the gradient's size, so where a
        # gradient is near 0 float rounding can flip a whole step and the comparison would be
        # flaky; SGD's steps are proportional to the gradients being compared
        loops.append(make_loop([FinishAfter(after_n_epochs=2), TrainingDataMonitoring()],
                               fast=fast, optimizer=torch.optim.SGD))
        loops[-1].run()
    plain, fast = loops
    assert fast.forward is not fast.model and fast.forward.model is fast.model
    for a, b in zip(plain.model.parameters(), fast.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(plain.model.decoder.weight_hh,
                           make_loop([]).model.decoder.weight_hh)      # it did train
    for row, ref in zip(untimed(fast.log), untimed(plain.log)):
        assert row == pytest.approx(ref, rel=1e-4, abs=1e-6)   # KL terms near 0 differ most
