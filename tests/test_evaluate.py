"""Evaluation: the importance-sampled NLL against the bound, a per-image reference, and evaluate.py."""
import argparse
import dataclasses
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from draw.checkpoint import load_model
from draw.datasets import batches, get_data
import draw.memory
import draw.outputs.scores
from draw.likelihood import importance_sampled_nll
from draw.model import nll_bound
from draw.outputs.scores import duration, main
from draw.training.draw_job import main as train

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
    # the sample's grey levels: eq. 12 is the objective, not a bound on -log p(x)
    assert "objective (eq. 12, grey levels):" in out and "importance-sampled, K=20:" in out
    assert "nll" not in out


def test_binary_data_is_scored_as_a_bound_on_the_nll(trained, capsys, monkeypatch):
    """For binary images (bmnist) the numbers are a bound on -log p(x) and an estimate of it."""
    def binary(*args, **kwargs):
        return dataclasses.replace(get_data(*args, **kwargs), binary=True)

    monkeypatch.setattr(draw.outputs.scores, "get_data", binary)
    main(str(trained), samples=2, subset=20)
    out = capsys.readouterr().out
    assert "nll bound (eq. 12):" in out and "importance-sampled nll, K=2:" in out


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


def evaluate_py(*args, monkeypatch) -> int:
    """Run evaluate.py in this process as `python evaluate.py args`; its exit status."""
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *map(str, args)])
    try:
        runpy.run_path(str(ROOT / "evaluate.py"), run_name="__main__")
    except SystemExit as e:
        return e.code
    return 0


def test_script_prints_numbers_and_fails_in_one_line(trained, capsys, monkeypatch):
    threads = torch.get_num_threads()
    try:
        assert evaluate_py(trained, "--samples", 3, "--subset", 40, "--bs", 20, "--threads", 1,
                           monkeypatch=monkeypatch) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "40 images" in out and "importance-sampled, K=3:" in out
    huge = trained.parent / "huge_model.pkl"
    ckpt = torch.load(trained, weights_only=True)
    torch.save({**ckpt, "config": {**ckpt["config"], "enc_dim": 100_000_000}}, huge)
    # its noise and KL terms of every step, kept without autograd too, are what cannot fit
    deep = trained.parent / "deep_model.pkl"
    torch.save({**ckpt, "config": {**ckpt["config"], "n_iter": 1_000_000_000}}, deep)
    for args, code, expected in (([str(trained) + ".missing"], 1, "cannot read"),
                                 ([trained, "--samples", 0], 2, "--samples"),
                                 ([trained, "-k", -1], 2, "--samples"),
                                 ([trained, "--subset", 0], 2, "--subset"),
                                 ([trained, "--threads", 0], 2, "--threads"),
                                 ([trained, "--seed", -1], 2, "--seed"),
                                 ([trained, "--dataset", "nope"], 1, "unknown dataset"),
                                 ([trained, "--device", "abc"], 1, "--device"),
                                 ([trained, "--samples", "many"], 2, "--samples"),
                                 ([huge], 1, "needs about"),
                                 ([deep, "--subset", 2], 1, "needs about"),
                                 ([trained, "-k", 10 ** 8, "--subset", 2], 1,
                                  "(100,000,000 images or samples at once) needs about")):
        assert evaluate_py(*args, monkeypatch=monkeypatch) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
        assert "Traceback" not in err[0]


def test_memory_is_checked_before_the_model_is_built(trained, capsys, monkeypatch):
    built = []
    monkeypatch.setattr(draw.outputs.scores, "build_model", lambda *a, **k: built.append(a))
    monkeypatch.setattr(draw.memory, "available_memory", lambda device=None: 1000)
    with pytest.raises(draw.memory.ResourceError, match=r"the model of .* needs about .* "
                                                           r"this machine has"):
        main(str(trained))
    assert not built


def test_progress_bar_and_expected_time(trained, capsys, monkeypatch):
    monkeypatch.setattr(draw.outputs.scores, "LONG", 0.0)           # every wait is "long"
    monkeypatch.setattr(draw.outputs.scores, "MAX_ROWS", 50)        # 10 images a pass at K=5
    result = main(str(trained), samples=5, subset=30)
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("expected time")]
    assert len(lines) == 1, captured.out                                # said once, up front
    assert "for 30 images at K=5" in lines[0] and "timed on the first 10" in lines[0]
    assert captured.out.index("expected time") < captured.out.index("objective")
    assert "importance sampling, K=5" in captured.err and "30/30" in captured.err
    assert result["images"] == 30


def test_duration():
    assert [duration(s) for s in (4.4, 90, 5400, 7322)] == ["4 s", "1 min 30 s", "1 h 30 min",
                                                            "2 h 2 min"]


def test_subset_is_random_not_a_prefix(trained, monkeypatch):
    seen = []
    real = draw.outputs.scores.batches
    monkeypatch.setattr(draw.outputs.scores, "batches",
                        lambda images, *a, **k: seen.append(images) or real(images, *a, **k))
    main(str(trained), samples=2, subset=50, seed=4)
    test = get_data("sample").test
    pick = torch.randperm(test.shape[0], generator=torch.Generator().manual_seed(4))[:50]
    assert all(torch.equal(images, test[pick]) for images in seen) and len(seen) == 2
    assert not torch.equal(seen[0], test[:50])


def test_reconstructions_picture_pairs_images_with_their_reconstructions(trained, tmp_path,
                                                                           bench_script, capsys):
    """bench/reconstructions.py: the picture's left cells are the split's first images exactly,
    the right ones sigmoid(c_T) of the model's pass over them with z from Q, then a row of
    prior samples; the printed L^x + L^z is the objective (eq. 12) of those images with the same
    draw of z."""
    out = tmp_path / "r.png"
    bench_script("reconstructions").main(str(trained), str(out), n=7, cols=3, seed=5)
    grid = np.asarray(Image.open(out), dtype=np.float32) / 255              # (4*29-1, 6*29-1)
    assert grid.shape == (4 * 29 - 1, 6 * 29 - 1)              # 3 rows of pairs + 1 of samples

    def cell(row: int, col: int) -> np.ndarray:
        return grid[row * 29:row * 29 + 28, col * 29:col * 29 + 28].reshape(-1)   # (784,)

    # the same draws as the script: Q's noise for the 7 images, then the prior's for 6 samples
    model, _ = load_model(trained)
    x = get_data("sample").valid[:7].float() / 255                           # (7, 784)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        c, kl = model(x, model.noise(7, x, generator))
        u = torch.cat([model.noise(6, x, generator), model.noise(1, x, generator)], dim=1)
        samples = model.sample(7, u)[-1]             # (7, 784): max(n, 2 * cols), the first 6 shown
    for k in range(7):
        row, col = divmod(k, 3)
        assert np.array_equal(cell(row, 2 * col), np.rint(x[k].numpy() * 255) / 255)
        assert np.abs(cell(row, 2 * col + 1) - torch.sigmoid(c[k]).numpy()).max() <= 0.5 / 255 + 1e-6
    for j in range(2, 6):                    # the cells after the 7th pair are mid-grey (0.5)
        assert np.all(cell(2, j) == 128 / 255)
    for j in range(6):
        assert np.abs(cell(3, j) - samples[j].numpy()).max() <= 0.5 / 255 + 1e-6
    bound = nll_bound(x, c, kl).mean().item()
    printed = capsys.readouterr().out
    assert f"= {bound:.2f} nats, the objective (eq. 12, grey levels)" in printed
    spread = bench_script("reconstructions").ink_spread
    images, recon = x.view(7, 1, 28, 28), torch.sigmoid(c).view(7, 1, 28, 28)
    assert (f"images {spread(images).mean():.2f}, reconstructions {spread(recon).mean():.2f}, "
            f"7 samples at 1.0 {spread(samples.view(7, 1, 28, 28)).mean():.2f}") in printed


def test_reconstructions_rows_of_samples_at_lower_temperatures_scale_one_draw(trained, tmp_path,
                                                                             bench_script):
    """--temperatures 1,0.5: a second row of samples decoded from half the first row's z."""
    out = tmp_path / "r.png"
    script = bench_script("reconstructions")
    script.main(str(trained), str(out), n=2, cols=2, seed=5, temperatures=(1.0, 0.5))
    grid = np.asarray(Image.open(out), dtype=np.float32) / 255
    assert grid.shape == (3 * 29 - 1, 4 * 29 - 1)              # 1 row of pairs + 2 of samples
    model, _ = load_model(trained)
    x = get_data("sample").valid[:2].float() / 255
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model(x, model.noise(2, x, generator))                  # Q's draw comes first
        u = model.noise(4, x, generator)                         # the 2 * cols shown
        rows = [model.sample(4, tau * u)[-1] for tau in (1.0, 0.5)]
    assert not torch.allclose(rows[0], rows[1], atol=0.01)
    for r, samples in enumerate(rows, start=1):
        for j in range(4):
            cell = grid[r * 29:r * 29 + 28, j * 29:j * 29 + 28].reshape(-1)
            assert np.abs(cell - samples[j].numpy()).max() <= 0.5 / 255 + 1e-6
    for bad in ("0", "1,-1", "nan", "a", "", "1,0.5,0.50"):
        with pytest.raises(argparse.ArgumentTypeError, match="numbers above 0"):
            script.temperature_list(bad)
    assert script.temperature_list("1,0.6") == (1.0, 0.6)


def test_ink_spread_is_the_rms_distance_of_the_ink_from_its_centre(bench_script):
    spread = bench_script("reconstructions").ink_spread
    images = torch.zeros(3, 1, 9, 9)
    images[0, 0, 2, 1] = images[0, 0, 2, 7] = 0.5      # two dots 6 apart: 3 from their middle
    images[1, 0, 4, 4] = 1.0                           # one dot: no spread
    images[2, 0, 0, 0], images[2, 0, 3, 4] = 3.0, 1.0  # weights 3:1, 5 apart: centre 1.25 along
    want = torch.tensor([3.0, 0.0, math.sqrt((3 * 1.25 ** 2 + 3.75 ** 2) / 4)])
    assert torch.allclose(spread(images), want)
    assert spread(torch.zeros(1, 3, 4, 4)).item() == 0.0           # no ink: 0, not NaN
    rgb = torch.zeros(1, 3, 9, 9)
    rgb[0, 0, 2, 1] = rgb[0, 2, 2, 7] = 1.0            # the channels' ink is summed
    assert torch.allclose(spread(rgb), torch.tensor([3.0]))
