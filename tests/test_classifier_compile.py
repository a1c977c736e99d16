"""The classifier's glimpses compiled (draw.fast_path.compile_glimpses on AttentionClassifier): the
same logits, windows, loss and gradients as eager, traced with aot_eager in float64 and once with
inductor itself; the same state_dict keys; the shipped classifiers' logits as they were before
`glimpses` existed, eager and compiled, and the same evaluation errors."""
from pathlib import Path

import numpy as np
import pytest
import torch

from draw.checkpoint import load_classifier
from draw.classifier import AttentionClassifier, ClassifierConfig, classification_loss
from draw.datasets import get_data
from draw.datasets.scenes import cluttered_recipe, compose
from draw.fast_path import compile_glimpses, compiler_missing
from draw.training.classify import ClassifyTask

TINY = ClassifierConfig(channels=1, height=9, width=11, n_iter=3, enc_dim=7, read_N=3,
                        n_classes=4)
COLOUR = ClassifierConfig(channels=3, height=8, width=8, n_iter=2, enc_dim=5, read_N=2,
                          n_classes=3)
PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"


def make(cfg, seed=0, dtype=torch.float64):
    """A classifier with large random weights, so that the windows move away from their first
    one and every term of eq. 21 carries signal into the gradients."""
    torch.manual_seed(seed)
    model = AttentionClassifier.from_config(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def batch(cfg, B=5, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, cfg.x_dim, generator=g, dtype=dtype),
            torch.randint(0, cfg.n_classes, (B,), generator=g))


def loss_and_grads(model, x, y):
    logits, att = model(x, return_attention=True)
    # a weight per example: every example's gradient counts differently
    weights = torch.arange(1, x.shape[0] + 1, dtype=x.dtype)
    loss = (weights * classification_loss(logits, y)).sum()
    return logits, att, loss, torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("per_call", [8, 2], ids=["one call", "calls of 2 and 1"])
@pytest.mark.parametrize("cfg", [TINY, COLOUR], ids=["grey", "colour"])
def test_compiled_glimpses_equal_eager_in_float64(cfg, per_call):
    # aot_eager traces the forward and backward graphs inductor would get, without generating
    # code (minutes on 2 cores); test_inductor_gradients_of_the_classifier runs inductor itself
    torch._dynamo.reset()
    eager = make(cfg)
    compiled = compile_glimpses(make(cfg), per_call=per_call, backend="aot_eager")
    assert compiled.glimpses_per_call == min(per_call, cfg.n_iter)     # T = 3: 3, or 2 + 1
    x, y = batch(cfg)
    logits1, att1, loss1, g1 = loss_and_grads(eager, x, y)
    for _ in range(2):          # the second call runs the graphs traced by the first
        logits2, att2, loss2, g2 = loss_and_grads(compiled, x, y)
        torch.testing.assert_close(logits2, logits1, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(loss2, loss1, rtol=1e-12, atol=1e-12)
        for name in att1:
            assert att2[name].shape == (cfg.n_iter, 5)
            torch.testing.assert_close(att2[name], att1[name], rtol=1e-12, atol=1e-12)
        for (name, _), a, b in zip(eager.named_parameters(), g1, g2):
            assert a.abs().max() > 0, name
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=name)


def test_glimpses_in_calls_of_any_length_change_nothing():
    """`forward` in calls of 1, 2 (2 + 1) or 3 glimpses gives the same numbers bit for bit."""
    model = make(TINY)
    x, y = batch(TINY)
    results = []
    for per_call in (None, 1, 2, 3):
        model.glimpses_per_call = per_call
        results.append(loss_and_grads(model, x, y))
    for logits, att, loss, grads in results[1:]:
        assert torch.equal(logits, results[0][0]) and torch.equal(loss, results[0][2])
        assert all(torch.equal(att[k], results[0][1][k]) for k in att)
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][3]))


@pytest.mark.skipif(compiler_missing(torch.device("cpu")) is not None,
                    reason="inductor needs a C++ compiler")
def test_inductor_gradients_of_the_classifier():
    """Inductor itself (C++ code, tens of seconds to compile): two glimpses in one graph give
    the eager loss and gradients. inplace_buffers, inductor's default, gave DRAW's graphs of
    several glimpses wrong gradients with the right loss (draw/fast_path.py); it stays off."""
    torch._dynamo.reset()
    cfg = ClassifierConfig(height=12, width=12, n_iter=2, enc_dim=8, read_N=3, n_classes=4)
    eager = make(cfg, dtype=torch.float32)
    compiled = compile_glimpses(make(cfg, dtype=torch.float32), per_call=2)
    x, y = batch(cfg, B=8, dtype=torch.float32)
    logits1, _, loss1, g1 = loss_and_grads(eager, x, y)
    logits2, _, loss2, g2 = loss_and_grads(compiled, x, y)
    torch.testing.assert_close(logits2, logits1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss2, loss1, rtol=1e-5, atol=1e-5)
    for (name, _), a, b in zip(eager.named_parameters(), g1, g2):
        assert a.norm() > 0, name
        assert ((b - a).norm() / a.norm()).item() < 1e-4, name


def test_compiling_keeps_the_state_dict():
    """A checkpoint of a compiled classifier is an eager one's: the compiled `glimpses` is an
    attribute of the instance, not a module, so no key changes."""
    keys = ["reader.readout.weight", "reader.readout.bias", "lstm.weight_ih", "lstm.weight_hh",
            "lstm.bias_ih", "lstm.bias_hh", "classifier.weight", "classifier.bias"]
    eager = make(TINY)
    compiled = compile_glimpses(make(TINY, seed=1), backend="aot_eager")
    assert list(eager.state_dict()) == keys and list(compiled.state_dict()) == keys
    compiled.load_state_dict(eager.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(eager.parameters(), compiled.parameters()))


def cluttered_sample(n: int) -> torch.Tensor:
    """n 100x100 cluttered images (n, 10000) composed from the shipped sample's test digits."""
    digits = get_data("sample").test[:20].numpy().reshape(-1, 28, 28)
    recipe = cluttered_recipe(len(digits), np.random.default_rng(0))
    return torch.from_numpy(compose(digits, recipe, np.arange(n))).float() / 255


# The shipped classifiers' logits of cluttered_sample(2), printed by the forward pass before it
# went through `glimpses` (commit e22aa78): the restructuring must not change a trained model
SHIPPED_LOGITS = {
    "cluttered-mnist-t4_model.pkl": [
        [-4.555785, -0.269218, -0.779191, -3.212271, 4.941510, -1.482350, -2.750340, 0.487838,
         -3.275598, 0.136962],
        [-2.796303, -6.924528, 7.547519, -1.791674, 0.628197, -3.246768, -6.228534, 3.560009,
         -0.915924, -1.357670]],
    "cluttered-mnist-t8_model.pkl": [
        [-2.741801, 0.977377, -1.113601, -3.295696, 4.558066, -0.411565, -0.820418, -0.942858,
         -1.918397, -0.117232],
        [-1.086552, -3.445371, 8.422601, 0.893614, -1.868199, -2.614393, -5.879813, 3.732386,
         -1.607808, -2.137125]]}


@pytest.mark.parametrize("name", sorted(SHIPPED_LOGITS))
def test_shipped_classifiers_give_their_logits_eager_and_compiled(name):
    torch._dynamo.reset()
    x = cluttered_sample(2)
    expected = torch.tensor(SHIPPED_LOGITS[name])
    eager, _ = load_classifier(PRETRAINED / name)
    compiled = compile_glimpses(load_classifier(PRETRAINED / name)[0], backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(eager(x), expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(compiled(x), expected, rtol=0, atol=1e-4)
    # evaluation (ClassifyTask.evaluate, as train-classifier.py's monitors): labels that make
    # one example right and one wrong, so the error is neither 0 nor 100%
    y = torch.tensor([int(expected[0].argmax()), int(expected[1].argmin())])
    numbers = [ClassifyTask(model).evaluate([(x, y)]) for model in (eager, compiled)]
    assert numbers[0]["error"] == numbers[1]["error"] == 50.0
    assert numbers[1]["cross_entropy"] == pytest.approx(numbers[0]["cross_entropy"], rel=1e-6)


def test_speed_benchmark_times_both_paths(capsys, monkeypatch, bench_script):
    """bench/classifier_speed.py, its compiled path traced with aot_eager (inductor would take
    minutes): one row per path and T, eager against itself 1.00, and the break-even line."""
    speed = bench_script("classifier_speed")
    monkeypatch.setattr(speed, "compile_glimpses",
                        lambda model: compile_glimpses(model, backend="aot_eager"))
    torch._dynamo.reset()
    speed.main(quick=True, threads=None, clock="cpu", niters="1,2", batch_size=2, repeats=1,
               warmup=1, seed=0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("classifier training speed: cpu")
    assert "batch 2 of 100x100" in lines[0]
    rows = [line.split() for line in lines[2:]]
    assert [row[:2] for row in rows if row[1] in ("eager", "compiled")] == [
        ["1", "eager"], ["1", "compiled"], ["2", "eager"], ["2", "compiled"]]
    for T in ("1", "2"):
        eager, compiled, repaid = [row for row in rows if row[0] == T]
        assert float(eager[2]) > 0 and eager[3] == "1.00" and len(eager) == 4
        assert float(compiled[2]) > 0 and float(compiled[3]) > 0 and float(compiled[4]) > 0
        assert repaid[1:3] in (["compiling", "repays"], ["compiling", "never"])
