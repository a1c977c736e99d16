"""bench/stability_loop.py: the step loop of the stability probes, and the probes on it."""
import json
import math

import pytest
import torch


def test_probe_steps_count_across_epochs_and_mark_rows(bench_script):
    probe = bench_script("stability_loop")
    asked = []

    def epoch_batches(epoch):
        for i in range(3):
            asked.append(f"{epoch}.{i}")
            yield f"{epoch}.{i}"

    got = list(probe.steps_across_epochs(epoch_batches, steps=7, every=3))
    assert [g[0] for g in got] == [1, 2, 3, 4, 5, 6, 7]
    assert [g[1] for g in got] == [0, 0, 0, 1, 1, 1, 2]
    assert [g[2] for g in got] == ["0.0", "0.1", "0.2", "1.0", "1.1", "1.2", "2.0"]
    assert [g[0] for g in got if g[3]] == [3, 6, 7]          # every 3rd step and the last
    assert asked == [g[2] for g in got]                        # no batch drawn past the last step
    assert list(probe.steps_across_epochs(epoch_batches, steps=0, every=3)) == []
    with pytest.raises(ValueError, match="epoch 0 has no batch"):
        next(probe.steps_across_epochs(lambda epoch: [], steps=5, every=2))


def test_probe_stops_at_a_non_finite_loss_and_saves_rows(bench_script, tmp_path, capsys):
    probe = bench_script("stability_loop")
    assert not probe.stopped_at_non_finite(torch.tensor(1.5), 3)
    assert probe.stopped_at_non_finite(torch.tensor(math.nan), 4)
    assert capsys.readouterr().out == "step 4: non-finite loss, stopped\n"
    probe.save_rows([{"step": 1}], str(tmp_path / "rows.json"))
    assert json.loads((tmp_path / "rows.json").read_text()) == [{"step": 1}]
    probe.save_rows([{"step": 1}], None)                       # no file asked for: none written
    assert [p.name for p in tmp_path.iterdir()] == ["rows.json"]


def test_draw_stability_rows_every_n_steps_across_epochs_and_its_json(bench_script, tmp_path,
                                                                      capsys):
    """bench/draw_stability.py on the shipped sample: 7 steps of 1,500 images cross epochs (the
    sample has 4,000 training images), a row at steps 3, 6 and 7, the same rows in the JSON."""
    out = tmp_path / "rows.json"
    bench_script("draw_stability").main(
        dataset="sample", model_path=None, niter=2, lr=1e-3, window_lr=1.0, steps=7, every=3,
        bs=1500, seed=1, grad_clip=10.0, out=str(out))
    rows = json.loads(out.read_text())
    assert [r["step"] for r in rows] == [3, 6, 7]
    assert all(math.isfinite(r["bound"]) and r["grad_total_max"] > 0 for r in rows)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    assert [int(line.split()[1]) for line in printed] == [3, 6, 7]


def test_draw_stability_stops_at_the_first_non_finite_loss(bench_script, tmp_path, capsys):
    """A rate of 1e9 blows the weights up: the probe says at which step and writes only the
    rows before it."""
    out = tmp_path / "rows.json"
    bench_script("draw_stability").main(
        dataset="sample", model_path=None, niter=2, lr=1e9, window_lr=1.0, steps=50, every=1,
        bs=500, seed=1, grad_clip=10.0, out=str(out))
    printed = capsys.readouterr().out
    (stop,) = [line for line in printed.splitlines() if "non-finite loss, stopped" in line]
    step = int(stop.split()[1].rstrip(":"))
    assert 1 < step < 50
    assert [r["step"] for r in json.loads(out.read_text())] == list(range(1, step))
