"""bench/projection.py: both fits recover the curves they are made of, the epoch a fit reaches
a level, the floor it never crosses, and the curves read from logs and CSV files."""
import math

import numpy as np
import pytest

from draw.checkpoint import save_log, save_log_csv
from draw.errors import DrawError


@pytest.fixture
def projection(bench_script):
    return bench_script("projection")


def test_log_linear_fit_recovers_its_curve_and_when_it_reaches_a_level(projection):
    t = np.arange(67.0, 128.0)
    fit = projection.fit_log_linear(t, 94.93 - 2.114 * np.log(t))
    assert fit.params == pytest.approx((94.93, -2.114), abs=1e-9)
    assert fit.rms < 1e-9
    # 94.93 - 2.114 ln t = 81.62  =>  t = exp(13.31 / 2.114)
    assert fit.reaches(81.62) == pytest.approx(math.exp(13.31 / 2.114), rel=1e-9)
    assert fit(fit.reaches(81.62)) == pytest.approx(81.62, abs=1e-9)


def test_a_rising_log_linear_curve_never_reaches_a_lower_level(projection):
    t = np.arange(1.0, 20.0)
    assert projection.fit_log_linear(t, 80 + 0.5 * np.log(t)).reaches(79.0) == math.inf


def test_saturating_fit_recovers_floor_scale_and_time_constant(projection):
    t = np.arange(67.0, 128.0)
    y = 83.66 + 2.37 * np.exp(-(t - 67) / 72.7)
    fit = projection.fit_saturating(t, y)
    assert fit.params == pytest.approx((83.66, 2.37, 72.7, 67), rel=1e-4)
    assert fit.rms < 1e-6
    assert fit.reaches(81.62) == math.inf              # below the floor
    assert fit.reaches(83.66) == math.inf              # the floor itself is never reached
    when = fit.reaches(84.0)                           # 83.66 + 2.37 exp(-(t-67)/72.7) = 84
    assert when == pytest.approx(67 - 72.7 * math.log(0.34 / 2.37), rel=1e-4)


def test_a_late_curve_fits_without_overflow(projection):
    """t0 = 5,000 epochs and a time constant of 20: exp(t0 / k) alone would overflow."""
    t = np.arange(5000.0, 5040.0)
    fit = projection.fit_saturating(t, 90 + 3 * np.exp(-(t - 5000) / 20))
    assert fit.params == pytest.approx((90, 3, 20, 5000), rel=1e-4)


def test_the_saturating_time_constant_stays_positive(projection):
    """An accelerating fall fits best with k < 0; the fit keeps k > 0, so `reaches` never reads
    a rising exponential as a floor."""
    t = np.arange(1.0, 30.0)
    fit = projection.fit_saturating(t, 90 - 0.01 * np.exp(t / 10))
    assert fit.params[2] > 0


def test_a_nearly_flat_log_linear_curve_never_reaches_a_far_level(projection):
    t = np.arange(10.0, 60.0)
    fit = projection.fit_log_linear(t, 85 - 0.001 * np.log(t))
    assert fit.reaches(80) == math.inf                 # e^5000 epochs: no number
    assert fit.reaches(84.99) == pytest.approx(math.exp(0.01 / 0.001), rel=1e-6)


def test_noisy_points_of_either_shape_fit_alike_and_the_answers_differ(projection):
    """The case of doc/recipes.md: over a short span both shapes fit within the noise, and only
    the log-linear one reaches a level well below the points."""
    rng = np.random.default_rng(0)
    t = np.arange(67.0, 128.0)
    y = 94.93 - 2.114 * np.log(t) + rng.normal(0, 0.03, t.size)
    log_linear, saturating = projection.fit_log_linear(t, y), projection.fit_saturating(t, y)
    assert abs(log_linear.rms - saturating.rms) < 0.005
    assert 0.025 < log_linear.rms < 0.035
    assert 300 < log_linear.reaches(81.62) < 900
    assert saturating.reaches(81.62) == math.inf


def test_curves_read_from_a_run_log_its_csv_and_a_commented_csv(projection, tmp_path):
    rows = [{"epoch": 0, "iteration": 0, "valid_nll_bound": 90.0}]
    rows += [{"epoch": e, "iteration": 500 * e, "train_nll_bound": 90.0 - e,
              "valid_nll_bound": 91.0 - e} for e in range(1, 6)]
    run = tmp_path / "run"
    run.mkdir()
    save_log(run / "x_log.pkl", rows)
    save_log_csv(run / "x_log.csv", rows)
    for source in (run, run / "x_log.pkl", run / "x_log.csv"):
        epochs, train = projection.read_curve(source, "train")
        assert epochs.tolist() == [1, 2, 3, 4, 5]      # row 0 has no train bound
        assert train.tolist() == [89, 88, 87, 86, 85]
        assert projection.read_curve(source, "valid")[1].tolist() == [90, 90, 89, 88, 87, 86]
    commented = tmp_path / "curve.csv"
    commented.write_text("# transcribed\n# from a table\nepoch,train_nll_bound\n36,86.03\n35,86.08\n")
    epochs, train = projection.read_curve(commented, "train")
    assert epochs.tolist() == [35, 36] and train.tolist() == [86.08, 86.03]     # in epoch order


def test_bad_curves_are_one_line_errors(projection, tmp_path):
    for name, content, message in (
            ("a.csv", b"epoch,loss\n1,2\n", "no columns 'epoch' and 'train_nll_bound'"),
            ("b.csv", b"epoch,train_nll_bound\n1,nan?\n", "b.csv: could not convert"),
            ("c.csv", b"epoch,train_nll_bound\n1,85\n2,nan\n", "not a finite number"),
            ("d.csv", b"epoch,train_nll_bound\n1,85\n2,84\n1,84.5\n", "an epoch appears twice"),
            ("e.csv", bytes(range(256)), "not a text file")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DrawError, match=message):
            projection.read_curve(tmp_path / name, "train")
    with pytest.raises(DrawError, match="PNG"):
        projection.main(str(tmp_path / "d.csv"), "train", first=0, age=0, target=None,
                        anneal=0, epoch_minutes=None, out=str(tmp_path / "p.txt"))
    with pytest.raises(DrawError, match="expected one \\*_log.pkl"):
        projection.read_curve(tmp_path, "train")
    with pytest.raises(DrawError, match="a fit needs at least 4"):
        projection.project(np.arange(1.0, 11.0), np.ones(10), first=8, age=0)
    with pytest.raises(DrawError, match="--age"):
        projection.project(np.arange(0.0, 10.0), np.ones(10), first=0, age=0)


def test_main_prints_both_answers_and_draws_them(projection, tmp_path, capsys):
    t = np.arange(35, 96)
    curve = tmp_path / "hold.csv"
    curve.write_text("epoch,train_nll_bound\n" + "".join(
        f"{e},{94.93 - 2.114 * math.log(e + 32):.6f}\n" for e in t))
    out = tmp_path / "p.png"
    projection.main(str(curve), "train", first=35, age=32, target=80.97, anneal=0.65,
                    epoch_minutes=6.0, out=str(out))
    text = capsys.readouterr().out
    when = math.exp((94.93 - 81.62) / 2.114)
    left = when - 127
    assert f"reaches 81.62 at t = {when:.0f}, {left:.0f} epochs on ({left * 6 / 60:.0f} h)" in text
    assert "t = epoch + 32 from 67 to 127" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
