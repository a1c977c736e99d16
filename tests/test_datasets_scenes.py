"""Cluttered MNIST and two-digit MNIST: composition, placement, seeds, splits, batches.

A small labelled "mnist" made of the shipped sample's real digits (labels drawn at random) stands
in for MNIST, converted into a temporary data directory.
"""
import numpy as np
import pytest
import torch

from draw.datasets import (DatasetError, get_data, get_labelled, labelled_batches,
                           supported_datasets)
from draw.datasets import scenes
from draw.datasets.converted import save_converted
from draw.datasets.labelled import FIXED_SEED
from draw.datasets.registry import REGISTRY
from draw.datasets.scenes import (Recipe, cluttered_recipe, compose, two_digit_recipe)
from draw.datasets.store import converted_path

SAMPLE = get_data("sample")


@pytest.fixture
def root(tmp_path):
    """A data directory holding a labelled mnist of 400 / 60 / 50 real digits."""
    rng = np.random.default_rng(0)
    splits = {"train": SAMPLE.train[:400].numpy(), "valid": SAMPLE.valid[:60].numpy(),
              "test": SAMPLE.test[:50].numpy()}
    for split in list(splits):
        splits[f"{split}_labels"] = rng.integers(0, 10, len(splits[split]), dtype=np.uint8)
    save_converted(converted_path("mnist", tmp_path), REGISTRY["mnist"], splits)
    return tmp_path


def reference_compose(digits: np.ndarray, recipe: Recipe, i: int) -> np.ndarray:
    """One example the slow, obvious way: float intensities added piece by piece, clipped at 1."""
    canvas = np.zeros((recipe.canvas, recipe.canvas))
    for p, size in enumerate(recipe.sizes):
        (cr, cc), (pr, pc) = recipe.cut[i, p], recipe.place[i, p]
        canvas[pr:pr + size, pc:pc + size] += digits[recipe.source[i, p], cr:cr + size,
                                                     cc:cc + size] / 255
    return np.clip(canvas, 0, 1).ravel()


def test_compose_equals_adding_and_clipping_piece_by_piece():
    digits = SAMPLE.train[:300].numpy().reshape(-1, 28, 28)
    rng = np.random.default_rng(1)
    for recipe in (cluttered_recipe(len(digits), rng), two_digit_recipe(50, len(digits), rng)):
        index = rng.permutation(len(recipe))[:40]
        images = compose(digits, recipe, index)                          # (40, side*side)
        assert images.dtype == np.uint8 and images.shape == (40, recipe.canvas ** 2)
        for row, i in zip(images, index):
            # equal up to float rounding (the sum of the quotients vs the quotient of the sum)
            assert np.allclose(row / 255, reference_compose(digits, recipe, i), rtol=0,
                               atol=1e-12)
        clipped = (images == 255).mean()
        assert clipped > 0            # overlapping ink really is clipped, not wrapped around


def test_cluttered_recipe_follows_mnih_et_al():
    n = 500
    recipe = cluttered_recipe(n, np.random.default_rng(2))
    assert recipe.canvas == 100 and recipe.sizes == (28,) + (8,) * 8
    assert np.array_equal(recipe.source[:, 0], np.arange(n))            # its own digit, whole
    assert (recipe.cut[:, 0] == 0).all()
    assert (recipe.source[:, 1:] != np.arange(n)[:, None]).all()        # distractors: other digits
    assert recipe.source.min() >= 0 and recipe.source.max() < n
    assert recipe.cut[:, 1:].min() == 0 and recipe.cut[:, 1:].max() == 20     # 8x8 inside 28x28
    assert recipe.place[:, 0].min() == 0 and recipe.place[:, 0].max() == 72   # digit inside
    assert recipe.place[:, 1:].min() == 0 and recipe.place[:, 1:].max() == 92
    # uniform places: each half of the range is hit about half the time
    assert abs((recipe.place[:, 0] < 36.5).mean() - 0.5) < 0.05


def test_two_digit_recipe_places_both_digits_inside_60x60():
    recipe = two_digit_recipe(1000, 300, np.random.default_rng(3))
    assert recipe.canvas == 60 and recipe.sizes == (28, 28)
    assert recipe.place.min() == 0 and recipe.place.max() == 32 and (recipe.cut == 0).all()
    assert recipe.source.max() < 300 and len(np.unique(recipe.source)) > 250


def test_cluttered_images_hold_their_digit_at_the_recorded_place(root):
    data = get_labelled("cluttered-mnist", root, download=False, seed=5)
    assert (data.shape, data.n_classes, len(data.train), len(data.test)) == ((1, 100, 100), 10,
                                                                            400, 50)
    mnist = get_data("mnist", root, download=False)
    index = torch.arange(0, 400, 7)
    images, labels = data.train.batch(index, epoch=3)
    recipe = data.train.recipe(3)
    assert torch.equal(labels, mnist.train_labels[index])
    for image, i in zip(images.numpy().reshape(-1, 100, 100), index.numpy()):
        r, c = recipe.place[i, 0]
        digit = mnist.train[i].numpy().reshape(28, 28)
        # ink is only ever added (then clipped): the digit is all there, at its place
        assert (image[r:r + 28, c:c + 28] >= digit).all()
        outside = image.copy()
        outside[r:r + 28, c:c + 28] = 0
        assert outside.any()          # distractors lie elsewhere too (8 patches of 64 pixels)


def test_cluttered_train_is_fresh_each_epoch_and_reproducible_from_the_seed(root):
    a = get_labelled("cluttered-mnist", root, download=False, seed=5)
    b = get_labelled("cluttered-mnist", root, download=False, seed=5)
    index = torch.arange(32)
    x0, y0 = a.train.batch(index, epoch=0)
    assert torch.equal(x0, b.train.batch(index, epoch=0)[0])           # same seed, same epoch
    x1, y1 = a.train.batch(index, epoch=1)
    assert torch.equal(y0, y1) and not torch.equal(x0, x1)              # same digits, new scenes
    assert (x0 != x1).any(dim=1).all()                                  # every image changed
    assert torch.equal(a.train.batch(index, epoch=0)[0], x0)           # epoch 0 again, exactly
    other = get_labelled("cluttered-mnist", root, download=False, seed=6)
    assert not torch.equal(other.train.batch(index, epoch=0)[0], x0)
    # an example does not depend on the batch it is composed in
    alone = torch.cat([a.train.batch(torch.tensor([i]), epoch=0)[0] for i in (31, 4, 17)])
    assert torch.equal(alone, x0[[31, 4, 17]])


def test_cluttered_valid_and_test_are_fixed_whatever_the_seed(root):
    a = get_labelled("cluttered-mnist", root, download=False, seed=1)
    b = get_labelled("cluttered-mnist", root, download=False, seed=2)
    for split in ("valid", "test"):
        sa, sb = getattr(a, split), getattr(b, split)
        index = torch.arange(len(sa))
        assert torch.equal(sa.batch(index, epoch=0)[0], sb.batch(index, epoch=7)[0])
        assert sa.seed == FIXED_SEED
    # each split is made of its own digits only: valid's pieces come from mnist's 60 valid digits
    mnist = get_data("mnist", root, download=False)
    assert np.array_equal(a.valid.digits.reshape(60, 784), mnist.valid.numpy())
    assert a.valid.recipe().source.max() < 60 and a.test.recipe().source.max() < 50


def test_labelled_batches(root):
    data = get_labelled("cluttered-mnist", root, download=False, seed=0)
    generator = torch.Generator().manual_seed(0)
    pairs = list(labelled_batches(data.train, 128, generator=generator, epoch=2))
    assert [len(y) for _, y in pairs] == [128, 128, 128, 16]
    for x, y in pairs:
        assert x.dtype == torch.float32 and x.shape[1] == 100 * 100
        assert 0 <= x.min() and x.max() <= 1 and y.dtype == torch.int64
    # one pass is a permutation of the split, labels travelling with their images
    x, y = map(torch.cat, zip(*pairs))
    stored = data.train.labels
    assert sorted(y.tolist()) == sorted(stored.tolist())
    in_order = torch.cat([x for x, _ in labelled_batches(data.train, 400, epoch=2)])
    matches = (x[:, None, :] == in_order[None, :, :]).all(dim=2)       # (400, 400)
    assert matches.sum(dim=1).eq(1).all()
    assert torch.equal(stored[matches.float().argmax(dim=1)], y)
    with pytest.raises(ValueError, match="batch_size"):
        next(labelled_batches(data.train, 0))


def test_subset_keeps_its_examples(root):
    data = get_labelled("cluttered-mnist", root, download=False, seed=0)
    keep = torch.tensor([3, 9, 27])
    small = data.train.subset(keep)
    assert len(small) == 3 and torch.equal(small.labels, data.train.labels[keep])
    assert small.recipe(0).source.max() < 3
    mnist = get_labelled("mnist", root, download=False)
    assert torch.equal(mnist.train.subset(keep).batch(torch.arange(3))[0], mnist.train.images[keep])


def test_cluttered_is_not_a_generation_dataset_and_needs_labels(root, tmp_path_factory):
    assert "cluttered-mnist" not in supported_datasets
    with pytest.raises(DatasetError, match="composed batch by batch .*get_labelled"):
        get_data("cluttered-mnist", root)
    with pytest.raises(DatasetError, match="bmnist has no labels"):
        get_labelled("bmnist", root)
    # an mnist converted before labels were read: the fix is named
    old = tmp_path_factory.mktemp("old")
    splits = {s: getattr(SAMPLE, s).numpy() for s in ("train", "valid", "test")}
    unlabelled = REGISTRY["mnist"].__class__(**{**REGISTRY["mnist"].__dict__, "labelled": False})
    save_converted(converted_path("mnist", old), unlabelled, splits)
    with pytest.raises(DatasetError, match="converted without labels .* `python -m draw.datasets "
                                           "convert mnist`"):
        get_labelled("cluttered-mnist", old, download=False)


def test_two_digit_mnist_is_a_stored_generation_dataset(root, monkeypatch):
    monkeypatch.setitem(scenes.TWO_DIGIT_SIZES, "train", 300)
    monkeypatch.setitem(scenes.TWO_DIGIT_SIZES, "valid", 40)
    monkeypatch.setitem(scenes.TWO_DIGIT_SIZES, "test", 30)
    data = get_data("two-digit-mnist", root, download=False)    # composed from mnist, stored
    assert converted_path("two-digit-mnist", root).is_file()
    assert (data.shape, data.binary) == ((1, 60, 60), False)
    assert [len(x) for x in (data.train, data.valid, data.test)] == [300, 40, 30]
    mnist = get_data("mnist", root, download=False)
    # the same images again, from the fixed seed; each image holds its two digits at their places
    for stream, split in enumerate(("train", "valid", "test")):
        digits = getattr(mnist, split).numpy().reshape(-1, 28, 28)
        recipe = two_digit_recipe(len(getattr(data, split)), len(digits),
                                  np.random.default_rng([scenes.TWO_DIGIT_SEED, stream]))
        # the recipe that tells where each stored image's digits are is this very one
        again = scenes.two_digit_split_recipe(split, len(digits))
        assert np.array_equal(again.source, recipe.source)
        assert np.array_equal(again.place, recipe.place)
        images = getattr(data, split).numpy().reshape(-1, 60, 60)
        for i in range(0, len(images), 7):
            for p in range(2):
                (r, c), d = recipe.place[i, p], digits[recipe.source[i, p]]
                assert (images[i, r:r + 28, c:c + 28] >= d).all()
            assert np.array_equal(images[i].ravel(), compose(digits, recipe, [i])[0])
    x = next(iter(torch.utils.data.DataLoader(data.train, batch_size=8)))
    assert x.shape == (8, 3600)


def test_binarized_pixels_are_drawn_with_their_grey_level_as_probability():
    grey = np.tile(np.array([0, 255, 64, 128, 191], dtype=np.uint8), (40_000, 1))
    drawn = scenes.binarized(grey, np.random.default_rng(5), chunk=7000)
    assert drawn.dtype == np.uint8 and set(np.unique(drawn)) == {0, 255}
    assert (drawn[:, 0] == 0).all() and (drawn[:, 1] == 255).all()
    # 40,000 draws each: the shares within 0.01 (about four standard errors) of grey / 255
    np.testing.assert_allclose((drawn[:, 2:] == 255).mean(axis=0), [64 / 255, 128 / 255,
                                                                    191 / 255], atol=0.01)
    assert np.array_equal(drawn, scenes.binarized(grey, np.random.default_rng(5), chunk=7000))


def test_two_digit_bmnist_is_two_digit_mnist_binarized(root, monkeypatch):
    for split, n in (("train", 200), ("valid", 30), ("test", 20)):
        monkeypatch.setitem(scenes.TWO_DIGIT_SIZES, split, n)
    grey = get_data("two-digit-mnist", root, download=False)
    binary = get_data("two-digit-bmnist", root, download=False)
    assert (binary.shape, binary.binary) == ((1, 60, 60), True)
    for split in ("train", "valid", "test"):
        g, b = getattr(grey, split).numpy(), getattr(binary, split).numpy()
        assert g.shape == b.shape and set(np.unique(b)) <= {0, 255}
        # the same canvases: no ink where there was none, ink wherever the grey level was full
        assert (b[g == 0] == 0).all() and (b[g == 255] == 255).all()
        middle = (g > 0) & (g < 255)
        assert 0.3 < (b[middle] == 255).mean() < 0.7
    # fixed: converted again, the same bits
    again = scenes.two_digit_binarized_splits(get_data("mnist", root, download=False))
    assert np.array_equal(again["valid"], binary.valid.numpy())
