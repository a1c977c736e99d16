"""DRAW's --window-lr: the attention windows' heads (eq. 21) at a multiple of the learning rate.

On two-digit MNIST's 60 x 60 canvas the windows' gradients dominate and spike
(doc/development.md); these tests keep the remedy in place: the heads' own parameter group (and
one group at 1, so that older runs resume), the share kept through Adam's step, the checks, and a
run that trains, says so in its header and resumes at its share.
"""
import math

import pytest
import torch

from draw.errors import DrawError
from draw.model import DrawConfig, DrawModel, nll_bound
from draw.training.draw_job import draw_adam
from draw.training.settings import DrawSettings


def small_model(attention=(3, 2)) -> DrawModel:
    torch.manual_seed(0)
    return DrawModel.from_config(DrawConfig(height=8, width=8, n_iter=3, enc_dim=6, dec_dim=6,
                                            z_dim=2, read_N=attention[0], write_N=attention[1]))


def test_the_window_heads_are_the_read_and_write_windows_only():
    model = small_model()
    heads = model.window_parameters()
    expected = [*model.reader.readout.parameters(), *model.writer.z_trafo.parameters()]
    assert [id(p) for p in heads] == [id(p) for p in expected]
    assert small_model((None, None)).window_parameters() == []


def test_one_group_at_one_two_below_it():
    model = small_model()
    assert len(draw_adam(model, DrawSettings(attention="3,2")).param_groups) == 1
    rest, heads = draw_adam(model, DrawSettings(attention="3,2", window_lr=0.25)).param_groups
    assert {id(p) for p in heads["params"]} == {id(p) for p in model.window_parameters()}
    assert len(rest["params"]) + len(heads["params"]) == len(list(model.parameters()))
    assert (rest["lr_scale"], heads["lr_scale"]) == (1.0, 0.25)


def test_one_adam_step_moves_the_windows_by_their_share():
    """Adam's first step moves every parameter with a gradient by about its lr: the window
    heads' by window_lr times the others'."""
    model = small_model()
    optimizer = draw_adam(model, DrawSettings(attention="3,2", learning_rate=0.01,
                                              window_lr=0.1))
    for group in optimizer.param_groups:
        group["lr"] = 0.01 * group["lr_scale"]
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(5, 64)
    nll_bound(x, *model(x)).mean().backward()
    optimizer.step()
    heads = {id(p) for p in model.window_parameters()}
    moved = {True: [], False: []}
    for p, p0 in zip(model.parameters(), before):
        moved[id(p) in heads].append((p.detach() - p0).abs().max().item())
    assert max(moved[True]) == pytest.approx(0.001, rel=1e-3)
    assert max(moved[False]) == pytest.approx(0.01, rel=1e-3)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, math.nan, math.inf])
def test_window_lr_outside_zero_one_is_refused(bad):
    with pytest.raises(DrawError, match="--window-lr must be a number in \\(0, 1\\]"):
        DrawSettings(attention="2,5", window_lr=bad)


def test_window_lr_without_attention_is_refused():
    with pytest.raises(DrawError, match="--window-lr must be 1 without --attention"):
        DrawSettings(window_lr=0.5)
    assert DrawSettings(attention="2,5", window_lr=0.5).window_lr == 0.5


def test_a_run_trains_and_resumes_at_its_share(tmp_path, capsys):
    from draw.training.draw_job import main
    flags = dict(dataset="sample", attention="2,3", n_iter=2, enc_dim=8, dec_dim=8, z_dim=2,
                 batch_size=50, subset=100, eval_subset=50, epochs=1, window_lr=0.1,
                 name="w", run_dir=str(tmp_path), compile=False, live_plotting=False)
    main(**flags)
    assert "attention windows x0.1" in capsys.readouterr().out
    run = next(tmp_path.iterdir())
    main(resume=str(run), epochs=2, run_dir=str(tmp_path), live_plotting=False)
    assert "attention windows x0.1" in capsys.readouterr().out
    with pytest.raises(DrawError, match="--window-lr is 0.1 there"):
        main(resume=str(run), epochs=3, window_lr=0.2, run_dir=str(tmp_path))
