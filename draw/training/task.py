"""What the main loop trains: a task turns a batch into a loss and the numbers to monitor.

The loop and its extensions know nothing about DRAW; they ask a task:

    model    the nn.Module the optimiser trains and the checkpoint saves
    module   what training passes go through: the model, or DDP around it under torchrun
    dist     this process's place (draw/training/distributed.py)
    loss(batch) -> (loss, sums)
             from this rank's slice of the global `batch`: the loss to backpropagate (scaled
             by `dist.loss_scale`) and this rank's SUMS, tensors, one of them "examples"; the
             monitors divide by it, so {"kl_term": (T,)} becomes train_kl_term_0 ... _{T-1}
    evaluate(batches, generator) -> means over all of `batches`, all-reduced, under no_grad;
             any noise from `generator`

The classifier's task (classify.py) returns the cross-entropy and {"error": 100 * wrong, ...}.
"""
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from draw.likelihood import bound_statistics
from draw.model import nll_bound
from draw.training.distributed import Distributed, wrap_model


class Task:
    """What every task holds (`model` on its device, wrapped in DDP here under torchrun);
    subclasses add `loss` and `evaluate`."""

    def __init__(self, model: nn.Module, dist: Distributed | None = None):
        self.model = model
        self.dist = dist or Distributed()
        self.module = wrap_model(model, self.dist, next(model.parameters()).device)


class DrawTask(Task):
    """DRAW's objective: the bound L = L^x + L^z (eq. 12) and its per-step KL terms (eq. 11),
    through the model's own forward pass."""

    def loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The mean bound over the global batch x (B, x_dim), as this rank's share of it."""
        B = x.shape[0]
        # the noise of the whole batch, as DrawModel.forward would draw it; every rank draws the
        # same (same seed, same draws so far) and keeps its slice, like that of x
        u = self.model.noise(B, like=x)                                       # (T, B, Z)
        x, u = self.dist.shard(x), self.dist.shard(u, dim=1)                  # (b, D), (T, b, Z)
        c, kl = self.module(x, u)                                             # (b, D), (T, b)
        bound = nll_bound(x, c, kl)                                           # (b,)
        loss = bound.sum() * self.dist.loss_scale(B)
        return loss, {"nll_bound": bound.detach().sum(), "kl_term": kl.detach().sum(dim=1),
                      "examples": torch.tensor(float(x.shape[0]), device=x.device)}

    def evaluate(self, data: Iterable[Tensor], generator: torch.Generator) -> dict:
        """The bound and each step's KL term, averaged over all images of `data`."""
        bound, kl = bound_statistics(self.model, self.model, data, generator, dist=self.dist)
        return {"nll_bound": bound, "kl_term": kl}
