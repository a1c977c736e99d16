"""Data-parallel training on PyTorch's own distributed engine: torchrun + DistributedDataParallel.

`torchrun` starts one process per device and tells each its place through environment
variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...); `init_distributed` reads them, so the
same `train-draw.py` runs alone or under `torchrun --nproc_per_node=K` on one or many machines.

Every rank builds the same global batch from the same seeded generator and keeps its own slice
of it (`Distributed.shard`): the ranks see disjoint parts of every epoch's shuffled data, and
`--bs` stays the global batch size. The posterior noise u is drawn for the whole batch on every
rank (the same seed, the same draws) and sliced alike, and each rank's loss is scaled so that
DDP's average of the gradients is the gradient of the global mean (`loss_scale`): a run on K
processes takes the same optimisation steps as a run on one, up to the order of floating-point
sums, and may be resumed on another number of processes. Monitoring all-reduces its sums, so the
log holds the job's numbers (draw/training/main_loop.py, draw/likelihood.py); only rank 0 prints and
writes files (draw/training/run.py).
"""
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from draw.errors import DrawError

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; the defaults describe a single-process run."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files, prints and serves plots."""
        return self.rank == 0

    def shard(self, x: Tensor, dim: int = 0) -> Tensor:
        """This rank's contiguous slice of a global batch along `dim`.

        Slices differ by at most one row when the batch does not divide evenly (the tail batch of
        an epoch); a rank may get an empty slice, which still takes part in every all-reduce.
        """
        if not self.enabled:
            return x
        return torch.tensor_split(x, self.world_size, dim=dim)[self.rank]

    def loss_scale(self, global_batch: int) -> float:
        """Factor turning a sum over this rank's slice into its share of the global mean.

        DDP averages gradients over ranks, so each rank's loss is sum * world_size / global_batch:
        the average of those is sum_over_all / global_batch whatever the slice sizes.
        """
        return self.world_size / global_batch

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """The sum of `t` over all ranks (a no-op in a single process)."""
        if self.enabled:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def process_place() -> Distributed:
    """This process's place as torchrun's environment variables describe it; joins nothing.

    Known before any process group exists, so that every rank can check its command line first
    and only the main rank need say what is wrong with it.
    """
    world_size = os.environ.get("WORLD_SIZE", "1")
    try:
        if int(world_size) == 1:
            return Distributed()
        return Distributed(int(os.environ["RANK"]), int(world_size),
                           int(os.environ.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError):
        raise DrawError(f"WORLD_SIZE={world_size} needs an integer RANK (and LOCAL_RANK) for "
                        f"each process: start the processes with torchrun") from None


@contextmanager
def reported_once(place: Distributed):
    """Around a process's whole run: make a user error or a Ctrl-C read as it does in one process.

    The processes of a machine check the same flags against the same files and stop on the same
    Ctrl-C, so only the first process of each machine reports a DrawError (prefixed with its rank
    where it is not rank 0) and only rank 0 a Ctrl-C; the others exit with the same status
    quietly, and torchrun reports every exit status.
    """
    try:
        yield
    except DrawError as e:
        if place.local_rank != 0:
            raise SystemExit(1) from None
        if not place.is_main:
            raise DrawError(f"rank {place.rank}: {e}") from e
        raise
    except KeyboardInterrupt:
        if not place.is_main:
            raise SystemExit(130) from None
        raise


def first_on_each_machine(d: Distributed, load: Callable[[], T], device: torch.device,
                          what: str) -> T:
    """`load()` in the first process of each machine, then in the others.

    For work that fills a cache on disk, such as downloading and converting a dataset: the others
    wait and then read what it wrote. If it fails on any machine, it fails everywhere: the
    processes where it failed raise its error, the others a DrawError saying that `what` (e.g.
    "loading bmnist") failed elsewhere.
    """
    result = error = None
    if d.local_rank == 0:
        try:
            result = load()
        except DrawError as e:
            error = e
    if d.enabled:
        failed = d.all_reduce_sum(torch.tensor([float(error is not None)], device=device))
        if error is None and failed.item() > 0:
            raise DrawError(f"{what} failed in another process (the first process of its "
                            f"machine says why)")
    if error is not None:
        raise error
    return load() if d.local_rank != 0 else result


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group that torchrun describes, if any.

    Parameters
    ----------
    device : torch.device
        The device asked for. Under torchrun on CUDA each process takes cuda:LOCAL_RANK.

    Returns
    -------
    (Distributed, torch.device)
        NCCL on GPUs, gloo on CPUs.
    """
    d = process_place()
    if not d.enabled:
        return d, device
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                rank=d.rank, world_size=d.world_size)
    return d, device


def wrap_model(model: nn.Module, d: Distributed, device: torch.device) -> nn.Module:
    """The module to train through: `model` itself, or DDP around it when distributed.

    DDP broadcasts rank 0's parameters at construction, so every rank starts identical even if
    they were initialised differently; it then averages gradients during backward. A rank's
    slice of a tail batch smaller than the world is empty: the model's forward pass then gives
    zero gradients, which still join the all-reduce.
    """
    if not d.enabled:
        return model
    return DistributedDataParallel(model,
                                   device_ids=[device.index] if device.type == "cuda" else None)


def close_distributed(d: Distributed, finished: bool = True):
    """Leave the process group. After a run that `finished` on every rank, wait for all of them
    first: a gloo rank that tears down while rank 0 still writes its last files can abort
    ("terminate called without an active exception"). After an error no barrier is taken, since
    the other ranks may never reach it; torchrun ends them."""
    if d.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
