"""Images composed from MNIST digits: cluttered MNIST and two-digit MNIST.

Cluttered MNIST, as in Mnih et al. 2014 ("Recurrent Models of Visual Attention", the RAM paper)
and the DRAW paper's Table 1: a 100x100 black canvas holds one 28x28 MNIST digit at a uniformly
random place fully inside it, and 8 distractors, 8x8 patches cut at random places of random other
digits of the same split and pasted at uniformly random places. Two-digit MNIST, the DRAW paper's
Figure 8: a 60x60 black canvas holds two random digits at uniformly random places. In both,
intensities are added and clipped at 1; on the stored uint8 values that is min(sum, 255), exactly
clip(sum of u8 / 255, 0, 1) after the division by 255.

A `Recipe` says, for every example of a split, which digit each piece is cut from, where, and
where it goes. Recipes are drawn in one vectorised call from a seeded generator, so a split's
images are a deterministic function of (seed, stream, epoch) and of nothing else (not the batch
size, not the order of the batches); the images themselves are composed only for the batch at
hand (`compose`), so 50,000 fresh 100x100 training images an epoch never sit in memory.
"""
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

DIGIT = 28                  # MNIST's side
CLUTTER_CANVAS = 100        # Mnih et al. 2014's 100x100 cluttered MNIST
CLUTTER_PIECES = 8          # distractors per image
CLUTTER_PATCH = 8           # their side
TWO_DIGIT_CANVAS = 60       # DRAW paper, Figure 8


@dataclass(frozen=True)
class Recipe:
    """How every example of a split is composed from P pieces."""
    source: np.ndarray          # (N, P) int64: the digit (index into the split's) of each piece
    cut: np.ndarray             # (N, P, 2) int64: (row, col) of its top-left corner in that digit
    place: np.ndarray           # (N, P, 2) int64: (row, col) of its top-left corner on the canvas
    sizes: tuple[int, ...]      # (P,): each piece's side, 28 for a whole digit
    canvas: int                 # the canvas side

    def __len__(self) -> int:
        return len(self.source)


def cluttered_recipe(n_digits: int, rng: np.random.Generator) -> Recipe:
    """One cluttered image per digit: piece 0 is digit i itself, pieces 1..8 distractors.

    The distractors come from digits other than i (a uniform pick among the other n - 1), so no
    image holds a second copy of parts of its own digit.
    """
    if n_digits < 2:
        raise ValueError(f"cluttered MNIST needs at least 2 digits, got {n_digits}")
    n, k = n_digits, CLUTTER_PIECES
    others = rng.integers(0, n - 1, size=(n, k))                         # (N, K)
    others += others >= np.arange(n)[:, None]                            # skip the digit itself
    source = np.concatenate([np.arange(n)[:, None], others], axis=1)     # (N, 1+K)
    cut = np.concatenate([np.zeros((n, 1, 2), np.int64),
                          rng.integers(0, DIGIT - CLUTTER_PATCH + 1, size=(n, k, 2))], axis=1)
    place = np.concatenate([rng.integers(0, CLUTTER_CANVAS - DIGIT + 1, size=(n, 1, 2)),
                            rng.integers(0, CLUTTER_CANVAS - CLUTTER_PATCH + 1, size=(n, k, 2))],
                           axis=1)                                       # (N, 1+K, 2)
    return Recipe(source, cut, place, (DIGIT,) + (CLUTTER_PATCH,) * k, CLUTTER_CANVAS)


def two_digit_recipe(n_images: int, n_digits: int, rng: np.random.Generator) -> Recipe:
    """n_images of two whole digits each, both drawn uniformly (with replacement) from n_digits."""
    source = rng.integers(0, n_digits, size=(n_images, 2))               # (N, 2)
    place = rng.integers(0, TWO_DIGIT_CANVAS - DIGIT + 1, size=(n_images, 2, 2))
    return Recipe(source, np.zeros((n_images, 2, 2), np.int64), place, (DIGIT, DIGIT),
                  TWO_DIGIT_CANVAS)


def compose(digits: np.ndarray, recipe: Recipe, index: np.ndarray) -> np.ndarray:
    """Compose the examples `index` ((B,) int) of `recipe` from the split's `digits` ((M, 28, 28)
    uint8): (B, canvas * canvas) uint8, the pieces' intensities added and clipped at 255."""
    index = np.asarray(index, dtype=np.int64)
    b, side = len(index), recipe.canvas
    canvas = np.zeros(b * side * side, np.uint16)                        # sums of <= 9 pieces
    flat_digits = digits.reshape(-1)
    for p, size in enumerate(recipe.sizes):
        span = np.arange(size)
        # flat offsets: one gather and one scatter index array instead of three each
        patch = (span[:, None] * DIGIT + span[None, :]).ravel()          # (size*size,)
        spot = (span[:, None] * side + span[None, :]).ravel()            # (size*size,)
        src = recipe.source[index, p]                                    # (B,)
        (cr, cc), (pr, pc) = recipe.cut[index, p].T, recipe.place[index, p].T   # (B,) each
        start = src * DIGIT * DIGIT + cr * DIGIT + cc                    # (B,)
        at = np.arange(b) * side * side + pr * side + pc                 # (B,)
        # one piece per example per pass, so no canvas pixel is indexed twice in this `+=`
        canvas[(at[:, None] + spot).ravel()] += flat_digits[(start[:, None] + patch).ravel()]
    return np.minimum(canvas, 255).astype(np.uint8).reshape(b, side * side)


# Two-digit MNIST: a fixed, stored dataset (the paper gives no sizes; these are a choice). Each
# split is composed from the MNIST split of the same name, so no digit appears in two splits.
TWO_DIGIT_SIZES = {"train": 60_000, "valid": 10_000, "test": 10_000}
TWO_DIGIT_SEED = 1502_04623      # fixed, so every conversion gives the same images
SPLITS = ("train", "valid", "test")


def two_digit_split_recipe(split: str, n_digits: int) -> Recipe:
    """The recipe of two-digit-mnist's `split`, from that split's `n_digits` mnist digits: which
    two digits each stored image holds, and where (the labels and places of its digits)."""
    rng = np.random.default_rng([TWO_DIGIT_SEED, SPLITS.index(split)])
    return two_digit_recipe(TWO_DIGIT_SIZES[split], n_digits, rng)


def two_digit_splits(mnist) -> dict[str, np.ndarray]:
    """two-digit-mnist's splits from mnist's `Data` (draw.datasets.store.Data)."""
    splits = {}
    with tqdm(total=sum(TWO_DIGIT_SIZES.values()), desc="composing two-digit-mnist",
              unit="img", delay=2, disable=None) as bar:
        for split in SPLITS:
            digits = getattr(mnist, split).numpy().reshape(-1, DIGIT, DIGIT)     # (M, 28, 28)
            recipe = two_digit_split_recipe(split, len(digits))
            chunks = []
            for start in range(0, len(recipe), 5000):
                chunks.append(compose(digits, recipe, np.arange(start, min(start + 5000,
                                                                           len(recipe)))))
                bar.update(len(chunks[-1]))
            splits[split] = np.concatenate(chunks)                       # (N, 3600)
    return splits


def binarized(images: np.ndarray, rng: np.random.Generator, chunk: int = 5000) -> np.ndarray:
    """Each pixel of uint8 `images` (N, D) drawn once as 0 or 255, 255 with probability
    grey / 255: the stochastic binarization of binarized MNIST (Salakhutdinov & Murray, 2008),
    fixed by `rng`. In chunks of images, so that the draws never take more than their size."""
    out = np.empty_like(images)
    for start in range(0, len(images), chunk):
        grey = images[start:start + chunk]
        u = rng.integers(0, 255, size=grey.shape, dtype=np.uint8)   # uniform on 0 .. 254
        out[start:start + chunk] = np.where(u < grey, 255, 0)       # P = grey / 255
    return out


def two_digit_binarized_splits(mnist) -> dict[str, np.ndarray]:
    """two-digit-bmnist's splits: two-digit-mnist's canvases, each binarized once."""
    return {split: binarized(images, np.random.default_rng([TWO_DIGIT_SEED, SPLITS.index(split),
                                                           1]))
            for split, images in two_digit_splits(mnist).items()}
