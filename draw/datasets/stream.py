"""Minibatches from in-memory uint8 images: shuffled by a seeded generator, floats made on device.

No DataLoader: a whole dataset fits in memory as uint8 (binarized MNIST is 55 MB), so a batch is
one index into a tensor. The images move to the device once per pass and each batch is turned
into floats there, so the host does almost no work per batch and needs no worker processes.
"""
from collections.abc import Iterator

import torch

from draw.datasets.crops import RandomCrops


def batches(images: torch.Tensor | RandomCrops, batch_size: int, *,
            generator: torch.Generator | None = None, epoch: int = 0,
            device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
            binarize: bool = False, drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Yield one pass over `images` in minibatches of floats in [0, 1].

    Parameters
    ----------
    images : torch.Tensor or RandomCrops
        (N, D) torch.uint8, a split of `Data`; the pixel value is u8 / 255. Pass it already on
        `device` to skip the copy at the start of every pass. A `RandomCrops` split
        (svhn-multi's train, draw/datasets/crops.py) gives its patches of `epoch`.
    batch_size : int
        Images per batch; the last batch is smaller when N is not a multiple, unless drop_last.
    generator : torch.Generator, optional
        Shuffles the order (and draws the binarization) when given; without it the order is
        the stored one. The same generator state gives the same batches, bit for bit.
    epoch : int
        Which epoch's patches a `RandomCrops` split gives; unused otherwise.
    device : str or torch.device
        Where the batches are made.
    dtype : torch.dtype
        The floating type of the batches.
    binarize : bool
        Replace each pixel p by a fresh Bernoulli(p) sample for every batch (dynamic
        binarization), drawn from `generator` (the global generator when None).
    drop_last : bool
        Skip the last batch when it is smaller than batch_size.

    Yields
    ------
    torch.Tensor
        (B, D) of `dtype` on `device`.
    """
    crops = images if isinstance(images, RandomCrops) else None
    if crops is not None:
        images = crops.images
    if images.dtype != torch.uint8 or images.dim() != 2:
        raise ValueError(f"images must be a (N, D) torch.uint8 tensor, got {images.dtype} "
                         f"{tuple(images.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = torch.device(device)
    if crops is not None:
        crops = crops.to(device)
        images = crops.images                    # the stored images: (N, C*H*W) uint8
    images = images.to(device)                                           # (N, D) uint8
    n = len(images)
    # Random numbers come from the generator's own device, so a CPU generator gives the same
    # order and the same binarization whichever device the batches are made on.
    rng_device = generator.device if generator is not None else device
    order = (torch.randperm(n, generator=generator, device=rng_device).to(device)
             if generator is not None else None)                         # (N,)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = start + batch_size
        index = order[start:end] if order is not None else slice(start, end)
        x = images[index] if crops is None else crops.patches(index, epoch)  # (B, D) uint8
        x = x.to(torch.float32).div_(255)                                # (B, D) in [0, 1]
        if binarize:
            u = torch.rand(x.shape, generator=generator, device=rng_device).to(device)  # (B, D)
            x = (u < x).to(torch.float32)                                # Bernoulli(x): 0 or 1
        yield x.to(dtype)
