"""Data parallelism with gloo on 127.0.0.1: 2 processes over slices equal 1 over the batch."""
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from draw.errors import DrawError
from draw.fast_path import compile_glimpses
from draw.likelihood import bound_statistics
from draw.model import DrawConfig, DrawModel, nll_bound
from draw.training.distributed import (Distributed, close_distributed, first_on_each_machine,
                                       init_distributed, process_place, wrap_model)
from draw.training.main_loop import MainLoop
from draw.training.task import DrawTask

CFG = DrawConfig(channels=1, height=8, width=8, n_iter=3, enc_dim=10, dec_dim=9, z_dim=4,
                 read_N=2, write_N=3)
# 8 divides evenly; 7 leaves slices of 4 and 3 (an epoch's tail batch), 1 slices of 1 and 0:
# the loss scale must still give the global mean, and an empty slice must still join DDP's
# all-reduce
BATCH_SIZES = [8, 7, 1, 8]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def global_batch(B):
    g = torch.Generator().manual_seed(7 + B)
    x = torch.rand(B, CFG.x_dim, generator=g).bernoulli(generator=g)
    u = torch.randn(CFG.n_iter, B, CFG.z_dim, generator=g)
    return x, u


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def adam_steps(d: Distributed, seed_offset=0, compiled=False):
    """A few training steps as train-draw.py takes them, the glimpses compiled or not (traced by
    aot_eager, in calls of 2 and 1); returns the final parameters."""
    torch.manual_seed(0 + seed_offset)     # ranks may start apart: DDP broadcasts rank 0's weights
    model = DrawModel.from_config(CFG)
    if compiled:
        compile_glimpses(model, per_call=2, backend="aot_eager")
    module = wrap_model(model, d, torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for B in BATCH_SIZES:
        x, u = global_batch(B)
        x_local, u_local = d.shard(x), d.shard(u, dim=1)
        c, kl = module(x_local, u_local)
        loss = nll_bound(x_local, c, kl).sum() * d.loss_scale(B)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
    return state(model)


def main_loop_steps(d: Distributed):
    """The same global batches through MainLoop.step, whose task shards x and the noise itself; on rank 1 a Ctrl-C arrives before the third step. Returns the parameters, each
    step's numbers and whether the loop agreed to stop after each step."""
    torch.manual_seed(0)
    model = DrawModel.from_config(CFG)
    loop = MainLoop(DrawTask(model, d), torch.optim.Adam(model.parameters(), lr=1e-2))
    torch.manual_seed(5)                  # the noise: the same draws on every rank
    steps = []
    for i, B in enumerate(BATCH_SIZES):
        if i == 2 and d.rank == 1:
            loop._sigint = True           # as MainLoop._on_sigint does on one rank only
        loop.step(global_batch(B)[0])
        last = loop.last_batch
        steps.append({"loss": last["loss"].item(),
                      "nll_bound_sum": last["sums"]["nll_bound"].item(),
                      "kl_sum": last["sums"]["kl_term"].tolist(),
                      "images": last["sums"]["examples"].item(),
                      "total_gradient_norm": last["total_gradient_norm"].item(),
                      "interrupted": loop.status["interrupted"]})
    return state(model), steps


def evaluation(d: Distributed):
    """bound_statistics over 11 images in batches of 3, 3, 3, 2; slices of 2 and 1, then 1 and 1."""
    torch.manual_seed(0)
    model = DrawModel.from_config(CFG)
    data = [global_batch(11)[0][i:i + 3] for i in range(0, 11, 3)]
    return bound_statistics(model, model, data, torch.Generator().manual_seed(2), dist=d)


def load_in_turn(d: Distributed, cache) -> tuple[str, str]:
    """first_on_each_machine: what each process loaded, and the error when rank 0's load fails."""
    def fill_or_read():
        if d.local_rank == 0:
            cache.write_text("converted")         # a download, say
            return "filled"
        return cache.read_text()                  # only there if rank 0 went first

    def fail():
        raise DrawError("no such file")

    loaded = first_on_each_machine(d, fill_or_read, torch.device("cpu"), what="loading x")
    try:
        first_on_each_machine(d, fail if d.rank == 0 else fill_or_read, torch.device("cpu"),
                              what="loading x")
    except DrawError as e:
        return loaded, str(e)
    return loaded, "no error"


def worker(rank, world_size, port, out_path):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    d, _ = init_distributed(torch.device("cpu"))
    try:
        result = {"plain": adam_steps(d, seed_offset=rank),
                  "compiled": adam_steps(d, seed_offset=rank, compiled=True),
                  "loop": main_loop_steps(d), "evaluation": evaluation(d),
                  "load": load_in_turn(d, Path(f"{out_path}.cache")),
                  "total": d.all_reduce_sum(torch.tensor([float(rank + 1)]))}
        torch.save(result, f"{out_path}.{rank}")
    finally:
        close_distributed(d)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What each of two gloo processes computed (one spawn for all the tests below)."""
    out = str(tmp_path_factory.mktemp("ranks") / "result")
    mp.start_processes(worker, args=(2, free_port(), out), nprocs=2, join=True,
                       start_method="spawn")
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]


def assert_same_params(got, want, rank, path):
    for name, p in want.items():
        # c_0's gradient is the pixels' error summed over the batch, which on random binary
        # images can cancel to nearly zero, where Adam's normalised step magnifies rounding
        torch.testing.assert_close(got[name], p, rtol=1e-5, atol=1e-5 if name == "c_0" else 1e-6,
                                   msg=lambda m: f"{path}, rank {rank}, {name}: {m}")


def test_two_processes_take_the_same_steps_as_one(two_ranks):
    single = adam_steps(Distributed())
    for rank, result in enumerate(two_ranks):
        assert result["total"].item() == 3.0                     # 1 + 2 over both ranks
        assert_same_params(result["plain"], single, rank, "plain")
        assert_same_params(result["compiled"], single, rank, "compiled glimpses")
    # and the steps really moved the parameters
    torch.manual_seed(0)
    initial = DrawModel.from_config(CFG).state_dict()
    assert any(not torch.allclose(initial[k], single[k]) for k in single)


def test_main_loop_shards_batch_and_noise_and_logs_global_numbers(two_ranks):
    single_params, single_steps = main_loop_steps(Distributed())
    assert not any(step["interrupted"] for step in single_steps)
    for rank, result in enumerate(two_ranks):
        params, steps = result["loop"]
        assert_same_params(params, single_params, rank, "MainLoop")
        for step, ref in zip(steps, single_steps):
            assert step["images"] == ref["images"]               # the global batch size
            assert step["loss"] == pytest.approx(ref["loss"], rel=1e-6)    # the global mean
            assert step["loss"] == pytest.approx(ref["nll_bound_sum"] / ref["images"], rel=1e-6)
            assert step["nll_bound_sum"] == pytest.approx(ref["nll_bound_sum"], rel=1e-6)
            # KL terms near 0 (1e-5 nats) carry float32 rounding of their summands (1e-10)
            assert step["kl_sum"] == pytest.approx(ref["kl_sum"], rel=1e-5, abs=1e-9)
            assert step["total_gradient_norm"] == pytest.approx(ref["total_gradient_norm"],
                                                                rel=1e-5)
        # rank 1's Ctrl-C before the third step stops both ranks after that same step
        assert [step["interrupted"] for step in steps] == [False, False, True, True]


def test_evaluation_is_sharded_and_all_reduced(two_ranks):
    bound, kl = evaluation(Distributed())
    for result in two_ranks:
        got_bound, got_kl = result["evaluation"]
        assert got_bound == pytest.approx(bound, rel=1e-6)
        assert got_kl == pytest.approx(kl, rel=1e-5)


def test_the_first_process_loads_first_and_a_failure_stops_all(two_ranks):
    assert [result["load"] for result in two_ranks] == [
        ("filled", "no such file"),
        ("converted", "loading x failed in another process (the first process of its machine "
                      "says why)")]


def test_an_empty_slice_gives_zero_gradients():
    torch.manual_seed(0)
    model = DrawModel.from_config(CFG)
    module = wrap_model(model, Distributed(), torch.device("cpu"))
    assert module is model                  # one process: the model itself, no wrapper
    x, u = torch.zeros(0, CFG.x_dim), torch.zeros(CFG.n_iter, 0, CFG.z_dim)
    c, kl = module(x, u)
    assert c.shape == (0, CFG.x_dim) and kl.shape == (CFG.n_iter, 0)
    nll_bound(x, c, kl).sum().backward()
    # every parameter gets a gradient, zero: DDP's all-reduce needs them all
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_shards_are_disjoint_and_cover_the_batch():
    x = torch.arange(11)
    for world in (1, 2, 3, 4):
        parts = [Distributed(rank, world, rank).shard(x) for rank in range(world)]
        assert torch.equal(torch.cat(parts), x)
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_single_process_defaults(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    d, device = init_distributed(torch.device("cpu"))
    assert d == Distributed() and not d.enabled and d.is_main and device == torch.device("cpu")
    assert d.loss_scale(50) == 1 / 50
    t = torch.tensor([2.0])
    assert torch.equal(d.all_reduce_sum(t), t)


def test_process_place_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_place() == Distributed(rank=3, world_size=4, local_rank=1)
    monkeypatch.delenv("RANK")
    with pytest.raises(DrawError, match="WORLD_SIZE=4 needs an integer RANK"):
        process_place()
