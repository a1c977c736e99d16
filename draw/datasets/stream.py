"""Minibatches from in-memory uint8 images: shuffled by a seeded generator, floats made on device.

No DataLoader: a whole dataset fits in memory as uint8 (binarized MNIST is 55 MB), so a batch is
one index into a tensor. The images move to the device once per pass and each batch is turned
into floats there, so the host does almost no work per batch and needs no worker processes.
"""
from collections.abc import Iterator

import torch

from draw.datasets.crops import RandomCrops


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None = None,
                  drop_last: bool = False,
                  device: str | torch.device = "cpu") -> Iterator[torch.Tensor | slice]:
    """The index of each minibatch of one pass over n examples: slices of the stored order, or
    with `generator` (B,) int64 pieces of a random permutation, on `device`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    # drawn on the generator's own device, so a CPU generator gives the same order on any device
    order = (torch.randperm(n, generator=generator, device=generator.device).to(device)
             if generator is not None else None)                         # (N,)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = start + batch_size
        yield order[start:end] if order is not None else slice(start, end)


def batches(images: torch.Tensor | RandomCrops, batch_size: int, *,
            generator: torch.Generator | None = None, epoch: int = 0,
            device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
            binarize: bool = False, drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Yield one pass over `images` in minibatches of floats in [0, 1], (B, D) `dtype` on `device`.

    Parameters
    ----------
    images : torch.Tensor or RandomCrops
        (N, D) torch.uint8, a split of `Data`; the pixel value is u8 / 255. Pass it already on
        `device` to skip the copy at the start of every pass. A `RandomCrops` split
        (svhn-multi's train, draw/datasets/crops.py) gives its patches of `epoch`.
    batch_size : int
        The last batch is smaller when N is not a multiple, unless drop_last.
    generator : torch.Generator, optional
        Shuffles the order (and draws the binarization) when given; the stored order otherwise.
        The same generator state gives the same batches, bit for bit.
    binarize : bool
        Replace each pixel p by a fresh Bernoulli(p) sample for every batch (dynamic
        binarization), drawn from `generator` (the global generator when None).
    """
    crops = images if isinstance(images, RandomCrops) else None
    images = crops.images if crops is not None else images
    if images.dtype != torch.uint8 or images.dim() != 2:
        raise ValueError(f"images must be a (N, D) torch.uint8 tensor, got {images.dtype} "
                         f"{tuple(images.shape)}")
    device = torch.device(device)
    crops = crops.to(device) if crops is not None else None
    images = crops.images if crops is not None else images.to(device)   # (N, D) uint8
    rng_device = generator.device if generator is not None else device
    for index in batch_indices(len(images), batch_size, generator, drop_last, device):
        x = images[index] if crops is None else crops.patches(index, epoch)  # (B, D) uint8
        x = x.to(torch.float32).div_(255)                                # (B, D) in [0, 1]
        if binarize:
            u = torch.rand(x.shape, generator=generator, device=rng_device).to(device)  # (B, D)
            x = (u < x).to(torch.float32)                                # Bernoulli(x): 0 or 1
        yield x.to(dtype)
