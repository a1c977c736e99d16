"""Evaluation: the importance-sampled NLL against the bound, a per-image reference, and the CLI."""
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch

from draw.training.checkpoint import load_model
from draw.datasets import batches, get_data
from draw.training.evaluate import cli, importance_sampled_nll, main
from draw.training.run import main as train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained briefly (30 steps) on the shipped sample digits: its model file."""
    run_root = tmp_path_factory.mktemp("evaluate")
    train(dataset="sample", subset=500, batch_size=50, epochs=3, n_iter=2, enc_dim=16, dec_dim=16,
          z_dim=4, learning_rate=1e-2, run_dir=str(run_root))
    (model_file,) = run_root.glob("*/*_model.pkl")
    return model_file


def test_importance_sampled_nll_is_below_the_bound(trained, capsys):
    result = main(str(trained), samples=20)
    assert result["images"] == 500 and result["samples"] == 20
    # K samples per image tighten the bound visibly (a few nats for this model), far beyond the
    # Monte Carlo noise of the one-sample bound averaged over 500 images (about 0.1 nats)
    assert result["is_nll"] < result["nll_bound"] - 1.0
    assert result["is_nll"] <= result["is_bound"]
    out = capsys.readouterr().out
    assert "nll bound (eq. 12):" in out and "importance-sampled nll, K=20:" in out


def test_estimate_per_image_jensen_and_k_equals_one(trained):
    model, _ = load_model(trained)
    images = get_data("sample").test[:64]
    nll, bound = importance_sampled_nll(model, batches(images, 64), 8,
                                        torch.Generator().manual_seed(0))
    assert nll.shape == bound.shape == (64,) and nll.dtype == torch.float64
    assert (nll <= bound + 1e-9).all()          # log-mean-exp >= mean, image by image
    one, one_bound = importance_sampled_nll(model, batches(images, 64), 1,
                                            torch.Generator().manual_seed(0))
    assert torch.equal(one, one_bound)          # with K = 1 the estimate is the sample's -log w
    assert nll.mean() < one.mean()              # more samples, tighter


def test_estimate_matches_a_per_image_reference(trained):
    model, _ = load_model(trained)
    x = get_data("sample").test[:3].float() / 255
    K, T, Z = 5, model.n_iter, model.sampler.z_dim
    nll, _ = importance_sampled_nll(model, [x], K, torch.Generator().manual_seed(1))
    # the same noise, image by image: rows i*K .. i*K + K-1 belong to image i
    u = torch.randn((T, 3 * K, Z), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for i in range(3):
            log_w = model.log_weight(x[i:i + 1].expand(K, -1), u[:, i * K:(i + 1) * K]).double()
            reference = -(math.log(sum(math.exp(w - log_w.max().item()) for w in log_w.tolist()))
                          + log_w.max().item() - math.log(K))
            assert nll[i].item() == pytest.approx(reference, abs=1e-6)


def test_memory_bound_chunks_do_not_change_the_per_image_structure(trained):
    model, _ = load_model(trained)
    images = get_data("sample").test[:10]
    nll, bound = importance_sampled_nll(model, batches(images, 10), 4,
                                        torch.Generator().manual_seed(0), max_rows=8)
    assert nll.shape == (10,) and (nll <= bound + 1e-9).all()


def test_cli_prints_numbers_and_fails_in_one_line(trained, capsys):
    cli([str(trained), "--samples", "3", "--subset", "40", "--bs", "20"])
    assert "40 images" in capsys.readouterr().out
    for argv, code, expected in (([str(trained) + ".missing"], 1, "cannot read"),
                                 ([str(trained), "--samples", "0"], 1, "--samples"),
                                 ([str(trained), "--dataset", "nope"], 1, "unknown dataset"),
                                 ([str(trained), "--device", "abc"], 1, "--device"),
                                 ([str(trained), "--samples", "many"], 2, "--samples")):
        with pytest.raises(SystemExit) as info:
            cli(argv)
        assert info.value.code == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


# runpy warns that draw.training.evaluate is imported already (by this file): harmless here
@pytest.mark.filterwarnings("ignore:'draw.training.evaluate' found in sys.modules")
def test_evaluate_py_and_python_m_run_the_same_cli(trained, capsys, monkeypatch):
    for run in (lambda: runpy.run_path(str(ROOT / "evaluate.py"), run_name="__main__"),
                lambda: runpy.run_module("draw.training.evaluate", run_name="__main__", alter_sys=True)):
        monkeypatch.setattr(sys, "argv", ["evaluate.py", str(trained), "--samples", "2",
                                          "--subset", "10"])
        run()
        assert "importance-sampled nll, K=2:" in capsys.readouterr().out
