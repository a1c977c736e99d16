"""Data parallelism with gloo on 127.0.0.1: K processes over slices equal one process over the batch."""
import socket

import pytest
import torch
import torch.multiprocessing as mp

from draw.distributed import Distributed, close_distributed, init_distributed, wrap_model
from draw.model import DrawConfig, DrawModel, nll_bound

CFG = DrawConfig(channels=1, height=8, width=8, n_iter=3, enc_dim=10, dec_dim=9, z_dim=4,
                 read_N=2, write_N=3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def global_batch(B):
    g = torch.Generator().manual_seed(7)
    x = torch.rand(B, CFG.x_dim, generator=g).bernoulli(generator=g)
    u = torch.randn(CFG.n_iter, B, CFG.z_dim, generator=g)
    return x, u


def adam_steps(d: Distributed, batch_sizes, seed_offset=0):
    """A few training steps as train-draw.py takes them; returns the final parameters."""
    torch.manual_seed(0 + seed_offset)     # ranks may start apart: DDP broadcasts rank 0's weights
    model = DrawModel.from_config(CFG)
    module = wrap_model(model, d, torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for B in batch_sizes:
        x, u = global_batch(B)
        x_local, u_local = d.shard(x), d.shard(u, dim=1)
        c, kl = module(x_local, u_local)
        loss = nll_bound(x_local, c, kl).sum() * d.loss_scale(B)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def worker(rank, world_size, port, batch_sizes, out_path):
    import os
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    d, _ = init_distributed(torch.device("cpu"))
    try:
        params = adam_steps(d, batch_sizes, seed_offset=rank)
        total = d.all_reduce_sum(torch.tensor([float(rank + 1)]))
        torch.save({"params": params, "total": total}, f"{out_path}.{rank}")
    finally:
        close_distributed(d)


def test_two_processes_take_the_same_steps_as_one(tmp_path):
    # 8 divides evenly; 7 leaves slices of 4 and 3 (the epoch's tail batch): the loss scale
    # must still give the global mean
    batch_sizes = [8, 7, 8]
    single = adam_steps(Distributed(), batch_sizes)
    out = str(tmp_path / "params")
    mp.start_processes(worker, args=(2, free_port(), batch_sizes, out), nprocs=2, join=True,
                       start_method="spawn")
    for rank in range(2):
        result = torch.load(f"{out}.{rank}", weights_only=True)
        assert result["total"].item() == 3.0                     # 1 + 2 over both ranks
        for name, p in single.items():
            torch.testing.assert_close(result["params"][name], p, rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"rank {rank}, {name}: {m}")
    # and the steps really moved the parameters
    torch.manual_seed(0)
    initial = DrawModel.from_config(CFG).state_dict()
    assert any(not torch.allclose(initial[k], single[k]) for k in single)


def test_shards_are_disjoint_and_cover_the_batch():
    x = torch.arange(11)
    for world in (1, 2, 3, 4):
        parts = [Distributed(rank, world, rank).shard(x) for rank in range(world)]
        assert torch.equal(torch.cat(parts), x)
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_single_process_defaults():
    d, device = init_distributed(torch.device("cpu"))
    assert d == Distributed() and not d.enabled and d.is_main and device == torch.device("cpu")
    assert d.loss_scale(50) == 1 / 50
    t = torch.tensor([2.0])
    assert torch.equal(d.all_reduce_sum(t), t)
