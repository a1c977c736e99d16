"""What the main loop trains: a task turns a batch into a loss and the numbers to monitor.

The loop (draw/training/main_loop.py) and its extensions know nothing about DRAW: they ask a
task. A task has

    model    the nn.Module the optimiser trains and the checkpoint saves
    module   the module training passes go through: the model, or DistributedDataParallel
             around it under torchrun (DDP averages only the gradients of passes through it)
    dist     this process's place in a torchrun job (draw/training/distributed.py)
    loss(batch) -> (loss, sums)
             `batch` is the global batch; the task keeps this rank's slice of it, draws any
             noise it needs and returns the loss to backpropagate (scaled by
             `dist.loss_scale`, so that DDP's average is the gradient of the global mean) and
             a dict of this rank's SUMS over its examples, tensors of any shape, one of them
             "examples" (how many); the loop all-reduces them and the monitoring extensions
             divide by the examples: `{"nll_bound": ...}` becomes the log's `train_nll_bound`,
             a vector `{"kl_term": (T,)}` `train_kl_term_0` ... `train_kl_term_{T-1}`.
    evaluate(batches, generator) -> dict of means over all of `batches` (same naming),
             under no_grad, all-reduced; `generator` is the source of any noise.

A classifier's task returns the cross-entropy as its loss and {"error": 100 * wrong, ...} as
its sums (the log's `train_error`, in percent), and trains with the same loop, extensions,
checkpoints and torchrun.
"""
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from draw.likelihood import bound_statistics
from draw.model import nll_bound
from draw.training.distributed import Distributed, wrap_model


class Task:
    """What every task holds; subclasses add `loss` and `evaluate`.

    Parameters
    ----------
    model : nn.Module
        On its device already.
    dist : Distributed, optional
        Under torchrun the model is wrapped in DistributedDataParallel once, here.
    """

    def __init__(self, model: nn.Module, dist: Distributed | None = None):
        self.model = model
        self.dist = dist or Distributed()
        self.module = wrap_model(model, self.dist, next(model.parameters()).device)


class DrawTask(Task):
    """DRAW's objective: the bound L = L^x + L^z (eq. 12) and its per-step KL terms (eq. 11).
    Any reader, writer or sampler of the DrawModel (subclasses too) trains through its own
    forward pass."""

    def loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The mean bound over the global batch x (B, x_dim), as this rank's share of it."""
        B = x.shape[0]
        # the noise of the whole batch, as DrawModel.forward would draw it; every rank draws the
        # same (same seed, same draws so far) and keeps its slice, like that of x
        u = self.model.noise(B, like=x)                                       # (T, B, Z)
        x, u = self.dist.shard(x), self.dist.shard(u, dim=1)                  # (b, D), (T, b, Z)
        c, kl = self.module(x, u)                                             # (b, D), (T, b)
        bound = nll_bound(x, c, kl)                                           # (b,)
        # the sum scaled by world / B: DDP's average over the ranks is the gradient of the
        # global batch's mean, even when the slices differ in size (1 / B in a single process)
        loss = bound.sum() * self.dist.loss_scale(B)
        return loss, {"nll_bound": bound.detach().sum(), "kl_term": kl.detach().sum(dim=1),
                      "examples": torch.tensor(float(x.shape[0]), device=x.device)}

    def evaluate(self, data: Iterable[Tensor], generator: torch.Generator) -> dict:
        """The bound and each step's KL term, averaged over all images of `data`."""
        bound, kl = bound_statistics(self.model, self.model, data, generator, dist=self.dist)
        return {"nll_bound": bound, "kl_term": kl}
