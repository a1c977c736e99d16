"""--precision (draw/precision.py): bf16-mixed trains close to float32 but not identically, with
float32 parameters, gradients, Adam and sums; evaluation stays float32; the setting is stored,
kept by --resume, and a bad value is one line; compiled glimpses trace the autocast."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from draw.checkpoint import load_log, load_model
from draw.classifier import AttentionClassifier, ClassifierConfig
from draw.datasets import batches, get_data
from draw.errors import DrawError
from draw.fast_path import compile_glimpses
from draw.likelihood import bound_statistics
from draw.model import DrawConfig, DrawModel
from draw.precision import (PRECISIONS, autocast, bf16_hardware, medium_rounds,
                            precision_choice)
from draw.training.classify import ClassifyTask
from draw.training.draw_job import main
from draw.training.main_loop import MainLoop, adam
from draw.training.task import DrawTask

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
CFG = DrawConfig(height=8, width=7, n_iter=4, enc_dim=16, dec_dim=12, z_dim=5, read_N=2,
                 write_N=3)
TINY = dict(dataset="sample", subset=100, batch_size=50, n_iter=2, enc_dim=8, dec_dim=8,
            z_dim=3, attention="2,3", seed=3, eval_subset=50)


def make(seed=0):
    """A float32 model with large random weights: windows move, every product carries signal
    that bfloat16's 8-bit mantissa visibly rounds."""
    torch.manual_seed(seed)
    model = DrawModel.from_config(CFG)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def batch(n=6):
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((n, CFG.x_dim), 0.3), generator=g)
    u = torch.randn(CFG.n_iter, n, CFG.z_dim, generator=g)
    return x, u


def loss_and_grads(model, x, u, precision):
    task = DrawTask(model)
    model.noise = lambda B, like: u              # DrawTask.loss draws the noise: fix it
    with autocast(precision, CPU):
        loss, sums = task.loss(x)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss, sums, grads


def test_bf16_mixed_is_close_to_float32_but_not_the_same():
    x, u = batch()
    loss32, sums32, grads32 = loss_and_grads(make(), x, u, "32")
    loss16, sums16, grads16 = loss_and_grads(make(), x, u, "bf16-mixed")
    # bfloat16 keeps about 3 significant digits of every product's inputs
    assert loss16 != loss32
    torch.testing.assert_close(loss16, loss32, rtol=2e-2, atol=0)
    torch.testing.assert_close(sums16["kl_term"], sums32["kl_term"], rtol=5e-2, atol=1e-2)
    cosines = [torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
               for a, b in zip(grads16, grads32)]
    assert min(cosines) > 0.98


def test_the_loss_and_its_sums_are_float32_under_autocast():
    x, u = batch()
    model = make()
    loss, sums, grads = loss_and_grads(model, x, u, "bf16-mixed")
    # the posterior's linear maps return bfloat16 under autocast; the KL is summed from float32
    with autocast("bf16-mixed", CPU):
        mean, log_sigma = model.sampler(torch.zeros(2, CFG.enc_dim))
    assert mean.dtype == log_sigma.dtype == torch.bfloat16
    assert loss.dtype == sums["nll_bound"].dtype == sums["kl_term"].dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in grads)


def test_a_bf16_mixed_step_keeps_parameters_gradients_and_adam_in_float32():
    x, _ = batch()
    steps = {}
    for precision in PRECISIONS:
        model = make()                           # seeds: the same noise for both steps
        loop = MainLoop(DrawTask(model), adam(model.parameters(), lr=1e-2), precision=precision)
        loop.step(x)
        steps[precision] = loop.last_batch
        assert all(p.dtype == p.grad.dtype == torch.float32 for p in model.parameters())
        for state in loop.optimizer.state.values():
            assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    # the loop's step did run under autocast: a loss close to float32's, not equal to it
    a, b = steps["32"], steps["bf16-mixed"]
    assert a["loss"] != b["loss"]
    torch.testing.assert_close(b["loss"], a["loss"], rtol=2e-2, atol=0)
    torch.testing.assert_close(b["total_gradient_norm"], a["total_gradient_norm"], rtol=5e-2,
                               atol=0)


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_compiled_glimpses_under_autocast_equal_eager_under_autocast():
    torch._dynamo.reset()
    x, u = batch()
    _, _, grads32 = loss_and_grads(make(), x, u, "32")
    loss_eager, sums_eager, grads_eager = loss_and_grads(make(), x, u, "bf16-mixed")
    compiled = compile_glimpses(make(), per_call=2, backend="aot_eager")
    for _ in range(2):          # the second call runs the graphs traced by the first
        loss, sums, grads = loss_and_grads(compiled, x, u, "bf16-mixed")
        torch.testing.assert_close(loss, loss_eager, rtol=1e-5, atol=0)
        torch.testing.assert_close(sums["kl_term"], sums_eager["kl_term"], rtol=1e-5, atol=1e-5)
        # the backward graph AOTAutograd traces rounds to bfloat16 at other places than eager
        # autograd (measured: 0.2-0.5% apart per parameter, each 0.2-1% from float32)
        for a, b, c in zip(grads, grads_eager, grads32):
            assert relative_error(a, b) < 1e-2 and relative_error(a, c) < 2e-2
    # the graphs did trace the autocast: their posterior comes out in bfloat16
    state = compiled.initial_state(x.shape[0], x)
    with torch.no_grad(), autocast("bf16-mixed", CPU):
        _, _, mean, _ = compiled.glimpses(state, x, u[:2])
    assert mean.dtype == torch.bfloat16


def test_the_classifier_trains_under_bf16_mixed_too():
    cfg = ClassifierConfig(height=12, width=12, n_iter=2, enc_dim=8, read_N=4)
    torch.manual_seed(0)
    model = AttentionClassifier.from_config(cfg)
    loop = MainLoop(ClassifyTask(model), adam(model.parameters(), lr=1e-3),
                    precision="bf16-mixed")
    x, y = torch.rand(8, cfg.channels * cfg.height * cfg.width), torch.arange(8) % 10
    with autocast("bf16-mixed", CPU):
        loss, sums = loop.task.loss((x, y))
    assert loss.dtype == sums["cross_entropy"].dtype == torch.float32
    loop.step((x, y))
    assert torch.isfinite(loop.last_batch["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_precision_choice_says_what_computes_bf16(monkeypatch):
    assert precision_choice("32", CPU)[0] == "32"
    for amx, avx512_bf16, expected in ((True, False, "AMX"), (False, True, "AVX512-BF16"),
                                       (False, False, None)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        assert bf16_hardware(CPU) == expected
        choice, why = precision_choice("bf16-mixed", CPU)
        assert choice == "bf16-mixed" and why.startswith("bf16-mixed (--precision)")
        assert (f"natively ({expected})" in why) if expected else ("emulated" in why)
    with pytest.raises(DrawError, match="--precision must be one of 32, bf16-mixed"):
        precision_choice("16-mixed", CPU)
    with pytest.raises(DrawError, match="on a CPU or a CUDA GPU, not on meta"):
        precision_choice("bf16-mixed", torch.device("meta"))
    with pytest.raises(ValueError):
        MainLoop(DrawTask(make()), adam(make().parameters(), lr=1e-3), precision="bf16")


def test_the_run_stores_its_precision_and_resume_keeps_it(tmp_path, capsys):
    main(**TINY, epochs=2, run_dir=str(tmp_path / "straight"), precision="bf16-mixed")
    main(**TINY, epochs=2, run_dir=str(tmp_path / "fp32"))
    main(**TINY, epochs=1, run_dir=str(tmp_path / "split"), precision="bf16-mixed")
    (split,) = (tmp_path / "split").iterdir()
    config = json.loads((split / "config.json").read_text())
    assert config["run"]["precision"] == "bf16-mixed"
    capsys.readouterr()
    main(resume=str(split), epochs=2)
    assert "precision: bf16-mixed (--precision)" in capsys.readouterr().out
    assert json.loads((split / "config.json").read_text())["run"]["precision"] == "bf16-mixed"
    (straight,) = (tmp_path / "straight").iterdir()
    (fp32,) = (tmp_path / "fp32").iterdir()
    model, ckpt = load_model(split / "sample_model.pkl")
    resumed = model.state_dict()
    assert ckpt["run"]["precision"] == "bf16-mixed"
    # bit-identical to the run that never stopped, hence trained in bf16 after the resume too
    for name, a in load_model(straight / "sample_model.pkl")[0].state_dict().items():
        assert torch.equal(a, resumed[name]), name
    assert any(not torch.equal(a, resumed[name])
               for name, a in load_model(fp32 / "sample_model.pkl")[0].state_dict().items())


def test_evaluation_is_float32_whatever_the_run_trains_in(tmp_path):
    main(**TINY, epochs=1, run_dir=str(tmp_path), precision="bf16-mixed")
    (run_dir,) = tmp_path.iterdir()
    model, _ = load_model(run_dir / "sample_model.pkl")
    rows = load_log(run_dir / "sample_log.pkl")
    test = get_data("sample").test
    bound, _ = bound_statistics(model, model, batches(test, 50), torch.Generator().manual_seed(3))
    assert bound == rows[-1]["test_nll_bound"]


@pytest.mark.parametrize("value", ["bf16", "16-mixed", ""])
def test_a_bad_precision_is_one_line_and_writes_nothing(tmp_path, value):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train-draw.py"), "--dataset", "sample", "--precision", value,
         "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == (f"error: --precision must be one of 32, bf16-mixed, got "
                             f"{value!r}\n")
    assert not list(tmp_path.iterdir())


def test_the_quality_bench_trains_each_precision_from_the_same_seed(capsys, bench_script,
                                                                    tmp_path, monkeypatch):
    bench = bench_script("quality")
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(80, 28 * 28, generator=g) < 0.3).to(torch.uint8) * 255  # bmnist's size
    data = type("Data", (), {"train": images[:60], "valid": images[60:]})
    monkeypatch.setattr(bench, "get_data", lambda *args, **kwargs: data)
    out = tmp_path / "results.json"
    bench.main(None, ["attention"], list(PRECISIONS), steps=3, batch_size=20, n_iter=2,
               attention=(2, 5), lr=1e-2, seed=0, device="cpu", threads=None, out=str(out))
    runs = json.loads(out.read_text())
    assert [(r["run"], r["precision"]) for r in runs] == [("attention 32", "32"),
                                                          ("attention bf16-mixed", "bf16-mixed")]
    a, b = (r["valid_nll_bound"] for r in runs)
    assert a != b and abs(a - b) < 0.02 * a
    assert "attention bf16-mixed: valid bound" in capsys.readouterr().out


def test_the_probe_of_medium_leaves_the_setting_and_needs_bfloat16_hardware():
    """medium_rounds asks the CPU with products at "medium" and restores the global setting;
    a CPU without native bfloat16 cannot round at it."""
    before = torch.get_float32_matmul_precision()
    rounds = medium_rounds()
    assert torch.get_float32_matmul_precision() == before
    if bf16_hardware(CPU) is None:
        assert rounds is False


def test_medium_matmul_precision_rounds_the_training_step_only(monkeypatch):
    """--matmul-precision medium: the training step's float32 products take bfloat16 inputs
    where the CPU rounds them at "medium" (a loss within bfloat16's rounding of float32's,
    not equal to it), and the global setting is as before after the step, so evaluation
    stays float32; a name torch does not know is a ValueError before any step."""
    x, u = batch()
    before = torch.get_float32_matmul_precision()
    losses = {}
    for name in ("highest", "medium"):
        model = make()
        model.noise = lambda B, like: u
        loop = MainLoop(DrawTask(model), adam(model.parameters(), lr=0.0),
                        matmul_precision=name)
        loop.step(x)
        losses[name] = loop.last_batch["loss"]
        assert torch.get_float32_matmul_precision() == before
    torch.testing.assert_close(losses["medium"], losses["highest"], rtol=2e-2, atol=0)
    if medium_rounds():
        assert losses["medium"] != losses["highest"]
    with pytest.raises(ValueError, match="matmul_precision must be one of highest, high, "
                                         "medium, got 'low'"):
        MainLoop(DrawTask(make()), adam(make().parameters(), lr=0.0), matmul_precision="low")


def test_the_run_stores_its_matmul_precision_and_resume_may_change_it(tmp_path, capsys):
    main(**TINY, epochs=1, run_dir=str(tmp_path), matmul_precision="medium")
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "config.json").read_text())["run"]["matmul_precision"] == \
        "medium"
    assert "matmul precision: medium" in capsys.readouterr().out
    main(resume=str(run_dir), epochs=2, matmul_precision="highest")
    assert "matmul precision: highest (float32 products)" in capsys.readouterr().out
    assert load_model(run_dir / "sample_model.pkl")[1]["run"]["matmul_precision"] == "highest"
