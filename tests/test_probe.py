"""bench/probe.py: the step loop of the stability probes."""
import json
import math

import torch


def test_probe_steps_count_across_epochs_and_mark_rows(bench_script):
    probe = bench_script("probe")
    asked = []

    def epoch_batches(epoch):
        asked.append(epoch)
        return [f"{epoch}.{i}" for i in range(3)]

    got = list(probe.probe_steps(epoch_batches, steps=7, every=3))
    assert [g[0] for g in got] == [1, 2, 3, 4, 5, 6, 7]
    assert [g[1] for g in got] == [0, 0, 0, 1, 1, 1, 2]
    assert [g[2] for g in got] == ["0.0", "0.1", "0.2", "1.0", "1.1", "1.2", "2.0"]
    assert [g[0] for g in got if g[3]] == [3, 6, 7]          # every 3rd step and the last
    assert asked == [0, 1, 2]                                  # no epoch drawn past the last step


def test_probe_stops_at_a_non_finite_loss_and_saves_rows(bench_script, tmp_path, capsys):
    probe = bench_script("probe")
    assert probe.finite(torch.tensor(1.5), 3)
    assert not probe.finite(torch.tensor(math.nan), 4)
    assert capsys.readouterr().out == "step 4: non-finite loss, stopped\n"
    probe.save_rows([{"step": 1}], str(tmp_path / "rows.json"))
    assert json.loads((tmp_path / "rows.json").read_text()) == [{"step": 1}]
    probe.save_rows([{"step": 1}], None)                       # no file asked for: none written
    assert [p.name for p in tmp_path.iterdir()] == ["rows.json"]
