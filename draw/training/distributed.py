"""Data-parallel training on PyTorch's own engine: torchrun + DistributedDataParallel.

torchrun tells each process its place through environment variables (RANK, WORLD_SIZE,
LOCAL_RANK, ...), so the same script runs alone or under `torchrun --nproc_per_node=K`.

Every rank builds the same global batch (and its noise u) from the same seeded generator and
keeps its slice (`Distributed.shard`); each rank's loss is scaled so that DDP's average of the
gradients is the gradient of the global mean (`loss_scale`). A run on K processes so takes a
run on one's steps, up to the order of float sums, and may resume on another K.
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
        """This rank's contiguous slice of a global batch along `dim`; slices differ by at most
        one row, and an empty one still takes part in every all-reduce."""
        if not self.enabled:
            return x
        return torch.tensor_split(x, self.world_size, dim=dim)[self.rank]

    def loss_scale(self, global_batch: int) -> float:
        """Factor turning a sum over this rank's slice into its share of the global mean: DDP
        averages over the ranks, so the mean of sum * world / B is the global sum / B."""
        return self.world_size / global_batch

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """The sum of `t` over all ranks (a no-op in a single process)."""
        if self.enabled:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def process_place() -> Distributed:
    """This process's place as torchrun's environment describes it; joins nothing, so that
    every rank can check its command line before any process group exists."""
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
    """Around a process's whole run: a user error or a Ctrl-C reads as in one process. Only the
    first process of each machine reports a DrawError (with its rank, but for rank 0) and only
    rank 0 a Ctrl-C; the others exit with the same status quietly."""
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
    """`load()` in the first process of each machine, then in the others, which read the cache
    it filled (a dataset's download). A failure anywhere fails everywhere: elsewhere as a
    DrawError saying that `what` ("loading bmnist") failed in another process."""
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
    """Join the process group that torchrun describes, if any (NCCL on GPUs, gloo on CPUs);
    returns this process's place and device (cuda:LOCAL_RANK on CUDA)."""
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
    """The module to train through: `model`, or DDP around it (which broadcasts rank 0's
    parameters at construction) when distributed."""
    if not d.enabled:
        return model
    return DistributedDataParallel(model,
                                   device_ids=[device.index] if device.type == "cuda" else None)


def close_distributed(d: Distributed, finished: bool = True):
    """Leave the process group; after a run that `finished`, at a barrier first (a gloo rank
    torn down while rank 0 still writes can abort), after an error not (others may never come)."""
    if d.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
