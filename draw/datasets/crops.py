"""Patches of stored images: svhn-multi's random 54x54 crops of its 64x64 images (DRAW, section 4.4).

The paper trains its SVHN model on 54x54 patches cut at random places of the 64x64 images (the
preprocessing of Goodfellow et al. 2013, draw/datasets/svhn.py) and validates it on patches
from their centre. Here:
- training patches are drawn afresh every epoch: the corners of epoch e's patches are a function
  of (seed, e) alone, one draw for the whole split as for cluttered MNIST's images
  (draw/datasets/scenes.py), so they depend neither on the batch size, nor on the order of the
  batches, nor on where a run was interrupted and resumed; only the batch at hand is cut
  (`RandomCrops.patches`), so an epoch's patches never sit in memory;
- each corner coordinate is uniform over all its places (0..10 for 54 of 64), the two
  independent: the paper says only that the places are random;
- valid and test are the centre patches (`centre_crops`), cut once: every run is scored on the
  same images. 64 - 54 is even, so the centre is exact: rows and columns 5..58.
"""
import numpy as np
import torch


def cut(images: torch.Tensor, stored: tuple[int, int, int], size: tuple[int, int],
        corners: torch.Tensor) -> torch.Tensor:
    """Cut one (h, w) = `size` patch of each of `images`, (B, C*H*W) uint8 of (C, H, W) =
    `stored`, at `corners`, (B, 2) int64 on their device: (row, col) of each top-left pixel.
    Returns (B, C*h*w) uint8 in (C, h, w) order."""
    C, H, W = stored
    (h, w), B = size, len(images)
    rows = corners[:, :1] + torch.arange(h, device=images.device)           # (B, h)
    cols = corners[:, 1:] + torch.arange(w, device=images.device)           # (B, w)
    # flat offsets into each (C*H*W,) image: one gather for the whole batch
    spot = (torch.arange(C, device=images.device)[None, :, None, None] * (H * W)
            + rows[:, None, :, None] * W + cols[:, None, None, :])         # (B, C, h, w)
    return images.gather(1, spot.reshape(B, C * h * w))                    # (B, C*h*w)


def centre_crops(images: torch.Tensor, stored: tuple[int, int, int],
                 size: tuple[int, int]) -> torch.Tensor:
    """(N, C*h*w) uint8: the centre patch of every image of `images` ((N, C*H*W) uint8)."""
    (C, H, W), (h, w) = stored, size
    top, left = (H - h) // 2, (W - w) // 2
    # a slice, not `cut`'s gather: its int64 index would be 8x the patches (915 MB for test)
    return images.view(len(images), C, H, W)[:, :, top:top + h, left:left + w].reshape(
        len(images), C * h * w)


class RandomCrops:
    """A training split whose examples are (h, w) = `size` patches of `images`, (N, C*H*W)
    uint8 of (C, H, W) = `stored`, cut at random places that `seed` (a run's --seed) and the
    epoch fix.

    It stands where a stored split's (N, C*h*w) uint8 tensor stands, with what the training code
    uses of one: `shape` and `len`, indexing by a (K,) int64 tensor (the examples kept, e.g. a
    run's --subset), `.to(device)`; `batches` (draw/datasets/stream.py) asks it for each batch's
    patches of the epoch at hand.
    """

    def __init__(self, images: torch.Tensor, stored: tuple[int, int, int],
                 size: tuple[int, int], seed: int):
        self.images, self.stored, self.size, self.seed = images, tuple(stored), tuple(size), seed
        self._cached: tuple[int, torch.Tensor] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(N, C*h*w): the examples and the size of each, as a stored split's tensor."""
        return len(self.images), self.stored[0] * self.size[0] * self.size[1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: torch.Tensor) -> "RandomCrops":
        """The examples `index` only; their corners are then drawn for them alone."""
        return RandomCrops(self.images[index], self.stored, self.size, self.seed)

    def to(self, device: str | torch.device) -> "RandomCrops":
        return RandomCrops(self.images.to(device), self.stored, self.size, self.seed)

    def corners(self, epoch: int) -> torch.Tensor:
        """(N, 2) int64 on the images' device: (row, col) of every patch of `epoch` (cached)."""
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            high = np.array([self.stored[1] - self.size[0], self.stored[2] - self.size[1]])
            corners = rng.integers(0, high + 1, size=(len(self.images), 2))     # (N, 2)
            self._cached = (epoch, torch.from_numpy(corners).to(self.images.device))
        return self._cached[1]

    def patches(self, index: torch.Tensor | slice, epoch: int) -> torch.Tensor:
        """(B, C*h*w) uint8: the patches of the examples `index` in `epoch`."""
        return cut(self.images[index], self.stored, self.size, self.corners(epoch)[index])
