"""The classifier's recipe: the read head (eq. 21) at --read-lr times the learning rate.

At one rate for every brick the 8-glimpse cluttered-MNIST run's gradient explodes back through
the glimpses (doc/classification.md); these tests keep the remedy in place: the read head's own
parameter group, its share kept by the schedule, the setting's checks and old runs' resume.
And the independent cluttered test set of bench/cluttered_check.py, which checks Table 1.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from draw.classifier import AttentionClassifier, ClassifierConfig
from draw.errors import DrawError
from draw.training.classify import ClassifierSettings, classifier_adam
from draw.training.extensions import LearningRateSchedule


def small_model() -> AttentionClassifier:
    torch.manual_seed(0)
    return AttentionClassifier.from_config(ClassifierConfig(height=12, width=12, n_iter=3,
                                                            enc_dim=6, read_N=3, n_classes=4))


def test_the_read_head_alone_has_its_own_group():
    model = small_model()
    optimizer = classifier_adam(model, ClassifierSettings(learning_rate=0.01, read_lr=0.25))
    rest, head = optimizer.param_groups
    assert {id(p) for p in head["params"]} == {id(p) for p in model.reader.parameters()}
    assert len(rest["params"]) + len(head["params"]) == len(list(model.parameters()))
    assert {id(p) for p in rest["params"]}.isdisjoint(id(p) for p in head["params"])
    assert (rest["lr_scale"], head["lr_scale"]) == (1.0, 0.25)


def test_the_schedule_keeps_the_read_heads_share():
    """Warm-up and decay scale both groups; the read head stays at read_lr times the rest."""
    model = small_model()
    optimizer = classifier_adam(model, ClassifierSettings(learning_rate=0.01, read_lr=0.25))
    schedule = LearningRateSchedule(optimizer, 0.01, warmup=4, decay=0.5, batches_per_epoch=5)
    schedule.main_loop = SimpleNamespace(status={"iteration": 0})
    for i, expected in [(0, 0.0025), (3, 0.01), (5, 0.005), (12, 0.0025)]:
        schedule.main_loop.status["iteration"] = i
        schedule.do("before_batch")
        rest, head = optimizer.param_groups
        assert rest["lr"] == pytest.approx(expected)
        assert head["lr"] == pytest.approx(0.25 * expected)


def test_one_adam_step_moves_the_read_head_by_its_share():
    """Adam's first step moves every parameter by about its lr (the gradient's sign times lr):
    the read head's by read_lr times the others'."""
    model = small_model()
    optimizer = classifier_adam(model, ClassifierSettings(learning_rate=0.01, read_lr=0.1))
    for group in optimizer.param_groups:
        group["lr"] = 0.01 * group["lr_scale"]
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.rand(5, 144), torch.tensor([0, 1, 2, 3, 0])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    head = {id(p) for p in model.reader.parameters()}
    moved = {True: [], False: []}
    for p, p0 in zip(model.parameters(), before):
        moved[id(p) in head].append((p.detach() - p0).abs().max().item())
    assert max(moved[True]) == pytest.approx(0.001, rel=1e-3)
    assert max(moved[False]) == pytest.approx(0.01, rel=1e-3)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, math.nan, math.inf])
def test_read_lr_outside_zero_one_is_refused(bad):
    with pytest.raises(DrawError, match="--read-lr must be a number in \\(0, 1\\]"):
        ClassifierSettings(read_lr=bad)


def test_a_run_stored_before_read_lr_resumes_at_one_rate():
    stored = ClassifierSettings().stored()
    del stored["read_lr"]
    assert ClassifierSettings.resumed(stored, {}, "RUN").read_lr == 1.0
    stored["read_lr"] = 0.1
    assert ClassifierSettings.resumed(stored, {}, "RUN").read_lr == 0.1
    with pytest.raises(DrawError, match="--read-lr is 0.1 there"):
        ClassifierSettings.resumed(stored, {"read_lr": 0.2}, "RUN")


def test_the_independent_test_set_follows_mnist_cluttereds_protocol(bench_script):
    """bench/cluttered_check.py: one whole digit per image and 8 patches of 8 x 8, clipped.
    With digits that are solid squares of one intensity each, the digit shows as a 28 x 28
    block at least as bright as itself, distractors add at most 8 * 64 pixels, and nothing
    exceeds 1."""
    check = bench_script("cluttered_check")
    levels = np.array([0.25, 0.5, 0.75, 1.0], dtype=np.float32)
    digits = np.broadcast_to(levels[:, None, None], (4, 28, 28)).copy()
    images = check.compose_cluttered(digits, np.random.default_rng(0))
    assert images.shape == (4, 100, 100) and images.min() >= 0 and images.max() <= 1
    for image, level in zip(images, levels):
        windows = np.lib.stride_tricks.sliding_window_view(image, (28, 28))
        assert (windows.min(axis=(2, 3)) >= level).any()      # the digit, fully inside
        assert np.count_nonzero(image) <= 28 * 28 + 8 * 64
    again = check.compose_cluttered(digits, np.random.default_rng(0))
    assert np.array_equal(images, again)
    assert not np.array_equal(images, check.compose_cluttered(digits, np.random.default_rng(1)))
