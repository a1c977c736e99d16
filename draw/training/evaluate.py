"""Evaluate a trained model: the bound of eq. 12, and an importance-sampled estimate of -log p(x).

The bound L = L^x + L^z (eq. 12) is what training minimises and what the paper reports. It is
an upper bound on -log p(x); the gap is KL(q(z|x) || p(z|x)). The importance-sampled estimate
(Burda, Grosse and Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016)

    -log p(x) ~= -log (1/K) sum_k p(x, z_k) / q(z_k | x),    z_k ~ q(z | x),

is again an upper bound in expectation, never looser than the bound, and it tightens to
-log p(x) as K grows. Per image it is at most the mean of -log w_k over the same K samples
(Jensen's inequality), which itself is an unbiased estimate of the bound.

    python -m draw.training.evaluate run/bmnist-r2-w5-t64-enc256-dec256-z100-lr34_model.pkl --samples 100
"""
import argparse
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from draw.training.checkpoint import load_model, resolve_device
from draw.cli import ArgumentParser, run
from draw.datasets import batches, get_data, supported_datasets
from draw.training.distributed import Distributed
from draw.errors import DrawError
from draw.model import DrawModel, nll_bound


@torch.no_grad()
def bound_statistics(forward: Callable, model: DrawModel, data: Iterable[Tensor],
                     generator: torch.Generator,
                     dist: Distributed | None = None) -> tuple[float, list[float]]:
    """The bound (eq. 12) and each step's KL term (eq. 11), averaged over all images of `data`.

    Parameters
    ----------
    forward : callable
        `model` itself or a faster callable with its signature (x, u) -> (c, kl).
    model : DrawModel
        Put in eval mode for the evaluation and back in its previous mode after.
    data : iterable of Tensor, each (B, x_dim) on the model's device
    generator : torch.Generator
        On the model's device; the source of the posterior noise u.
    dist : Distributed, optional
        Under torchrun, every rank passes the same `data` and `generator`, evaluates its slice
        of each batch (with its slice of the batch's noise) and gets the averages over all of
        them, the same numbers as one process would compute, up to float rounding.

    Returns
    -------
    nll_bound : float, nats per image
    kl_terms : list of n_iter floats, nats per image
    """
    dist = dist or Distributed()
    was_training = model.training
    model.eval()
    # [sum of bounds, number of images, sum of KL_t for every t], in float64
    sums = torch.zeros(2 + model.n_iter, dtype=torch.float64,
                       device=next(model.parameters()).device)
    try:
        for x in data:
            u = torch.randn((model.n_iter, x.shape[0], model.sampler.z_dim), generator=generator,
                            device=x.device, dtype=x.dtype)                   # (T, B, Z)
            x, u = dist.shard(x), dist.shard(u, dim=1)                        # (b, D), (T, b, Z)
            if x.shape[0] == 0:
                continue        # a rank's empty slice of a batch smaller than the world
            c, kl = forward(x, u)                                             # (b, D), (T, b)
            sums[0] += nll_bound(x, c, kl).double().sum()
            sums[1] += x.shape[0]
            sums[2:] += kl.double().sum(dim=1)                                # (T,)
    finally:
        model.train(was_training)
    sums = dist.all_reduce_sum(sums)
    count = sums[1].item()
    if count == 0:
        raise ValueError("bound_statistics needs at least one image")
    return sums[0].item() / count, (sums[2:] / count).tolist()


@torch.no_grad()
def importance_sampled_nll(model: DrawModel, data: Iterable[Tensor], samples: int,
                           generator: torch.Generator,
                           max_rows: int = 10_000) -> tuple[Tensor, Tensor]:
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
        At most this many (image, sample) pairs go through the model at once; it bounds memory.

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
                u = torch.randn((model.n_iter, rows.shape[0], model.sampler.z_dim),
                                generator=generator, device=rows.device, dtype=rows.dtype)
                log_w = model.log_weight(rows, u).double().view(-1, samples)  # (b, K)
                nll.append(-(torch.logsumexp(log_w, dim=1) - math.log(samples)).cpu())
                bound.append(-log_w.mean(dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(nll), torch.cat(bound)


def main(model: str, dataset: str | None = None, split: str = "test", samples: int = 100,
         batch_size: int = 100, subset: int | None = None, seed: int = 0, device: str = "auto",
         data_dir: str | None = None) -> dict:
    """Load a model file, evaluate it on a split, print and return the numbers.

    Returns
    -------
    dict with "nll_bound" (eq. 12, analytic KL), "is_nll" (importance-sampled, K = samples),
    "is_bound" (the K-sample estimate of the bound), "images", "samples".
    """
    for flag, value in (("--samples", samples), ("--bs", batch_size), ("--subset", subset)):
        if value is not None and value < 1:
            raise DrawError(f"{flag} must be a positive integer, got {value}")
    if split not in ("train", "valid", "test"):
        raise DrawError(f"--split must be train, valid or test, got {split!r}")
    dev = resolve_device(device)
    net, ckpt = load_model(model, map_location=dev)
    run = ckpt.get("run") or {}
    dataset = dataset or run.get("dataset")
    if dataset is None:
        raise DrawError(f"{model} does not say which dataset it was trained on; pass --dataset")
    if dataset not in supported_datasets:
        raise DrawError(f"unknown dataset {dataset!r}; choose from {', '.join(supported_datasets)}")
    data = get_data(dataset, root=data_dir)
    cfg = net.config
    if tuple(data.shape) != (cfg.channels, cfg.height, cfg.width):
        raise DrawError(f"{model} models {cfg.channels}x{cfg.height}x{cfg.width} images, but "
                        f"{dataset} has {'x'.join(map(str, data.shape))}")
    images = getattr(data, split)
    if subset is not None and subset < images.shape[0]:
        # a random subset: some splits are sorted by class (binarized MNIST's test set)
        pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
        images = images[pick[:subset]]

    def stream():
        return batches(images, batch_size, device=dev)

    generator = torch.Generator(device=dev)
    bound, _ = bound_statistics(net, net, stream(), generator.manual_seed(seed))
    is_nll, is_bound = importance_sampled_nll(net, stream(), samples, generator.manual_seed(seed))
    result = {"nll_bound": bound, "is_nll": is_nll.mean().item(),
              "is_bound": is_bound.mean().item(), "images": images.shape[0], "samples": samples}
    gap = result["nll_bound"] - result["is_nll"]
    print(f"{model}: epoch {ckpt['epoch']}, {dataset} {split} set, {result['images']} images")
    print(f"  {'nll bound (eq. 12):':<36}{result['nll_bound']:9.2f} nats")
    print(f"  {f'importance-sampled nll, K={samples}:':<36}{result['is_nll']:9.2f} nats "
          f"({gap:.2f} below the bound)")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="evaluate.py",
        description="Test-set bound and importance-sampled NLL of a DRAW model.")
    parser.add_argument("model", type=str, help="a <name>_model.pkl file written by train-draw.py")
    parser.add_argument("--dataset", type=str, default=None,
                        help="dataset to evaluate on (default: the one the model was trained on)")
    parser.add_argument("--split", type=str, default="test", choices=("train", "valid", "test"),
                        help="which split (default: %(default)s)")
    parser.add_argument("-k", "--samples", type=int, default=100,
                        help="importance samples K per image (default: %(default)s)")
    parser.add_argument("--bs", "--batch-size", type=int, default=100, dest="batch_size",
                        help="images per batch (default: %(default)s)")
    parser.add_argument("--subset", type=int, default=None,
                        help="evaluate on this many randomly chosen images (default: all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the posterior noise and of --subset (default: %(default)s)")
    parser.add_argument("--device", type=str, default="auto",
                        help="cpu, cuda, cuda:N, or auto: CUDA when available "
                             "(default: %(default)s)")
    parser.add_argument("--data-dir", type=str, default=None,
                        help="where datasets live (default: $DRAW_DATA_PATH, $FUEL_DATA_PATH, "
                             "or a cache directory)")
    return parser


def cli(argv: list[str] | None = None) -> None:
    """Parse flags and evaluate; bad input is one line on stderr and a non-zero exit status."""
    run(main, build_parser().parse_args(argv))


if __name__ == "__main__":
    cli()
