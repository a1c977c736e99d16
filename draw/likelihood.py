"""How well a DRAW model explains images: the bound of eq. 12, and an importance-sampled
estimate of -log p(x).

The bound L = L^x + L^z (eq. 12), what training minimises and the paper reports, exceeds
-log p(x) by KL(q(z|x) || p(z|x)). The importance-sampled estimate (Burda, Grosse and
Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016)

    -log p(x) ~= -log (1/K) sum_k p(x, z_k) / q(z_k | x),    z_k ~ q(z | x),

is an upper bound in expectation, never looser than the bound (per image at most the mean of
-log w_k, by Jensen), and tightens to -log p(x) as K grows, at K passes per image.
"""
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from draw.model import DrawModel, nll_bound

# (image, sample) rows per pass: enough for efficient matrix products, few enough that the
# progress bar moves every few seconds on a CPU at T = 64
MAX_ROWS = 1000


@torch.no_grad()
def bound_statistics(forward: Callable, model: DrawModel, data: Iterable[Tensor],
                     generator: torch.Generator,
                     dist=None) -> tuple[float, list[float]]:
    """The bound (eq. 12) and each step's KL term (eq. 11), averaged over all images of `data`.

    Parameters
    ----------
    forward : callable
        `model` itself or a callable with its signature (x, u) -> (c, kl).
    model : DrawModel
        In eval mode during the evaluation, in its previous mode after.
    data : iterable of Tensor, each (B, x_dim) on the model's device
    generator : torch.Generator
        On the model's device; the source of the posterior noise u.
    dist : draw.training.distributed.Distributed, optional
        Under torchrun every rank passes the same `data` and `generator`, evaluates its slice
        of each batch and gets one process's averages, up to float rounding.

    Returns
    -------
    nll_bound : float, and kl_terms : list of n_iter floats, nats per image
    """
    was_training = model.training
    model.eval()
    # [sum of bounds, number of images, sum of KL_t for every t], in float64
    sums = torch.zeros(2 + model.n_iter, dtype=torch.float64,
                       device=next(model.parameters()).device)
    try:
        for x in data:
            u = model.noise(x.shape[0], like=x, generator=generator)           # (T, B, Z)
            if dist is not None:
                x, u = dist.shard(x), dist.shard(u, dim=1)                    # (b, D), (T, b, Z)
            if x.shape[0] == 0:
                continue        # a rank's empty slice of a batch smaller than the world
            c, kl = forward(x, u)                                             # (b, D), (T, b)
            sums[0] += nll_bound(x, c, kl).double().sum()
            sums[1] += x.shape[0]
            sums[2:] += kl.double().sum(dim=1)                                # (T,)
    finally:
        model.train(was_training)
    if dist is not None:
        sums = dist.all_reduce_sum(sums)
    count = sums[1].item()
    if count == 0:
        raise ValueError("bound_statistics needs at least one image")
    return sums[0].item() / count, (sums[2:] / count).tolist()


@torch.no_grad()
def importance_sampled_nll(model: DrawModel, data: Iterable[Tensor], samples: int,
                           generator: torch.Generator, max_rows: int = MAX_ROWS,
                           progress: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor]:
    """Importance-sampled -log p(x) with K = `samples` posterior samples, per image.

    Parameters
    ----------
    model : DrawModel
    data : iterable of Tensor, each (B, x_dim) on the model's device
    samples : int
        K, the number of posterior samples per image.
    generator : torch.Generator
        On the model's device; the source of the posterior noise.
    max_rows : int
        At most this many (image, sample) pairs per pass, which bounds memory.
    progress : callable, optional
        Called with the number of images finished after every pass.

    Returns
    -------
    nll : Tensor, shape (N,), float64, CPU
        -log (1/K) sum_k w_k, nats per image.
    bound : Tensor, shape (N,), float64, CPU
        -(1/K) sum_k log w_k over the same samples: a K-sample estimate of the bound, >= nll.
    """
    if samples < 1:
        raise ValueError(f"the number of importance samples must be at least 1, got {samples}")
    was_training = model.training
    model.eval()
    nll, bound = [], []
    try:
        for x in data:
            for chunk in x.split(max(1, max_rows // samples)):                # (b, D)
                rows = chunk.repeat_interleave(samples, dim=0)                # (b*K, D)
                u = model.noise(rows.shape[0], like=rows, generator=generator)  # (T, bK, Z)
                log_w = model.log_weight(rows, u).double().view(-1, samples)  # (b, K)
                nll.append(-(torch.logsumexp(log_w, dim=1) - math.log(samples)).cpu())
                bound.append(-log_w.mean(dim=1).cpu())
                if progress is not None:
                    progress(chunk.shape[0])
    finally:
        model.train(was_training)
    return torch.cat(nll), torch.cat(bound)
