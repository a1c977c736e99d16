"""svhn-multi as the DRAW paper trains it (section 4.4): random 54x54 patches of the 64x64
training images, new every epoch from the run's seed, and the centre patches of valid and test.

The images here are made so that every pixel says where it is: channel 0 holds its row, channel
1 its column, channel 2 the image's number, so a patch's pixels give its place exactly. They are
written in the converted format (`save_converted`) that svhn-multi's conversion writes
(tests/test_datasets_svhn.py converts small archives in the published format into it).
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from draw.checkpoint import load_model
from draw.datasets import batches, get_data, get_dataset
from draw.datasets.__main__ import print_status
from draw.datasets.crops import RandomCrops, centre_crops, cut
from draw.datasets.registry import REGISTRY
from draw.datasets.store import converted_path, save_converted
from draw.training.draw_job import DRAW, main
from draw.training.run import check

ROOT = Path(__file__).resolve().parents[1]
STORED, SIZE = (3, 64, 64), (54, 54)


def located(n: int, first: int = 0) -> np.ndarray:
    """(n, 3*64*64) uint8: channel 0 = the row, 1 = the column, 2 = the image's number."""
    images = np.zeros((n, 3, 64, 64), np.uint8)
    images[:, 0] = np.arange(64)[:, None]
    images[:, 1] = np.arange(64)[None, :]
    images[:, 2] = (first + np.arange(n))[:, None, None]
    return images.reshape(n, -1)


def places(patches: torch.Tensor) -> list[tuple[int, int, int]]:
    """(image number, top row, left column) of each (B, 3*54*54) uint8 or float patch, checking
    that it is a whole 54x54 window of its image."""
    if patches.dtype != torch.uint8:
        patches = (patches * 255).round().to(torch.uint8)
    found = []
    for p in patches.view(-1, 3, 54, 54).long():
        top, left, number = int(p[0, 0, 0]), int(p[1, 0, 0]), int(p[2, 0, 0])
        assert torch.equal(p[0], (top + torch.arange(54))[:, None].expand(54, 54))
        assert torch.equal(p[1], (left + torch.arange(54))[None, :].expand(54, 54))
        assert (p[2] == number).all()
        found.append((number, top, left))
    return found


@pytest.fixture
def svhn_dir(tmp_path):
    """A data directory holding a converted svhn-multi: 40 train, 3 valid, 2 test images."""
    save_converted(converted_path("svhn-multi", tmp_path), REGISTRY["svhn-multi"],
                   {"train": located(40), "valid": located(3, 100), "test": located(2, 200)})
    return tmp_path


def test_the_model_sees_3x54x54():
    spec = REGISTRY["svhn-multi"]
    assert (spec.shape, spec.stored_shape) == ((3, 54, 54), (3, 64, 64))
    cfg = check(DRAW, {"config": str(ROOT / "configs" / "svhn.toml")}).cfg
    assert (cfg.channels, cfg.height, cfg.width) == (3, 54, 54)


def test_cut_takes_the_window_at_each_corner():
    images = torch.from_numpy(located(3))
    corners = torch.tensor([[0, 0], [10, 10], [3, 7]])
    assert places(cut(images, STORED, SIZE, corners)) == [(0, 0, 0), (1, 10, 10), (2, 3, 7)]
    # one pixel by hand: the last row, first column of channel 0 of image 2 is row 3 + 53
    assert cut(images, STORED, SIZE, corners).view(3, 3, 54, 54)[2, 0, 53, 0] == 56


def test_centre_crops_are_rows_and_columns_5_to_58():
    images = torch.from_numpy(located(4))
    centre = centre_crops(images, STORED, SIZE)
    assert places(centre) == [(i, 5, 5) for i in range(4)]
    assert torch.equal(centre, cut(images, STORED, SIZE, torch.full((4, 2), 5)))


def test_corners_are_a_function_of_seed_and_epoch():
    images = torch.from_numpy(located(2000))
    crops = RandomCrops(images, STORED, SIZE, seed=7)
    first = crops.corners(0)
    assert first.shape == (2000, 2) and first.dtype == torch.int64
    # every place of 0..10 is drawn, for rows and for columns, and nothing else
    assert set(first[:, 0].tolist()) == set(first[:, 1].tolist()) == set(range(11))
    # another object, the same seed and epoch: the same corners; in another epoch, others
    assert torch.equal(RandomCrops(images, STORED, SIZE, seed=7).corners(0), first)
    assert torch.equal(crops.corners(3), RandomCrops(images, STORED, SIZE, 7).corners(3))
    assert (crops.corners(1) != first).any(dim=1).float().mean() > 0.8
    assert (RandomCrops(images, STORED, SIZE, seed=8).corners(0) != first).any(dim=1).any()
    assert torch.equal(crops.corners(0), first)           # back to epoch 0 after another
    expected = np.random.default_rng([7, 0]).integers(0, 11, size=(2000, 2))
    assert np.array_equal(first.numpy(), expected)


def test_a_subset_draws_corners_for_its_images_alone():
    crops = RandomCrops(torch.from_numpy(located(30)), STORED, SIZE, seed=1)
    part = crops[torch.tensor([4, 9, 20])]
    assert part.shape == (3, 3 * 54 * 54) and len(part) == 3
    assert [n for n, _, _ in places(part.patches(slice(None), 0))] == [4, 9, 20]
    assert torch.equal(part.corners(0), RandomCrops(part.images, STORED, SIZE, 1).corners(0))


def test_batches_cut_each_images_patch_of_the_epoch_whatever_the_batch_size():
    crops = RandomCrops(torch.from_numpy(located(25)), STORED, SIZE, seed=3)

    def epoch(e, bs, seed):
        out = list(batches(crops, bs, generator=torch.Generator().manual_seed(seed), epoch=e))
        assert all(b.shape[1] == 3 * 54 * 54 and b.dtype == torch.float32 for b in out)
        return [p for b in out for p in places(b)]

    seen = epoch(0, 4, seed=0)
    corners = crops.corners(0)
    assert sorted(seen) == [(i, *corners[i].tolist()) for i in range(25)]
    # another batch size or order: the same patch of every image; another epoch: others
    assert sorted(epoch(0, 7, seed=5)) == sorted(seen)
    assert sorted(epoch(1, 4, seed=0)) != sorted(seen)
    assert [n for n, _, _ in epoch(1, 4, seed=0)] == [n for n, _, _ in seen]   # same order


def test_get_data_gives_random_train_patches_and_centre_valid_and_test(svhn_dir):
    data = get_data("svhn-multi", svhn_dir, download=False, seed=4)
    assert data.shape == (3, 54, 54)
    assert isinstance(data.train, RandomCrops) and data.train.seed == 4
    assert data.train.shape == (40, 3 * 54 * 54)
    assert places(data.valid) == [(100, 5, 5), (101, 5, 5), (102, 5, 5)]
    assert places(data.test) == [(200, 5, 5), (201, 5, 5)]
    # as a torch Dataset: the train patches of the epoch set on it
    dataset = get_dataset("svhn-multi", "train", svhn_dir, download=False, seed=4)
    dataset.epoch = 2
    assert places(dataset[6][None]) == [(6, *data.train.corners(2)[6].tolist())]
    assert places(get_dataset("svhn-multi", "test", svhn_dir, download=False)[1][None]) == \
        [(201, 5, 5)]


def test_the_list_says_how_the_splits_are_made(tmp_path, capsys):
    print_status(str(tmp_path))
    out = capsys.readouterr().out
    assert "svhn-multi" in out and "3x54x54 of 64x64" in out
    assert "54x54 patches: random in train (new every epoch, from the run's seed), the centre " \
           "in valid and test" in out
    cifar = [line for line in out.splitlines() if line.strip().startswith("cifar10 ")][-1]
    assert "first 45,000" in cifar and "last 5,000 held out" in cifar and "all 50,000" in cifar


TINY = dict(dataset="svhn-multi", batch_size=10, n_iter=2, enc_dim=8, dec_dim=8, z_dim=3,
            attention="2,3", seed=5, eval_subset=0)


def test_train_draw_trains_on_each_epochs_patches_and_resumes_with_them(svhn_dir, tmp_path,
                                                                          monkeypatch):
    """train-draw.py's batches are the patches of (--seed, epoch); a run stopped after epoch 1
    and resumed trains epoch 2 on the same patches as a run that never stopped."""
    import draw.training.draw_job as draw_job

    seen = []

    def recording(*args, **kwargs):
        for x in batches(*args, **kwargs):
            if "epoch" in kwargs:                         # training, not valid / test
                seen.append((kwargs["epoch"], places(x)))
            yield x

    monkeypatch.setattr(draw_job, "batches", recording)
    flags = {**TINY, "data_dir": str(svhn_dir)}
    main(**flags, epochs=2, run_dir=str(tmp_path / "whole"))
    crops = RandomCrops(torch.from_numpy(located(40)), STORED, SIZE, seed=5)
    assert [e for e, _ in seen] == [0] * 4 + [1] * 4
    for epoch in (0, 1):
        trained = sorted(p for e, batch in seen if e == epoch for p in batch)
        assert trained == [(i, *crops.corners(epoch)[i].tolist()) for i in range(40)]

    part = tmp_path / "part"
    main(**flags, epochs=1, run_dir=str(part))
    (run_dir,) = part.iterdir()
    main(resume=str(run_dir), epochs=2, data_dir=str(svhn_dir))
    (whole_dir,) = (tmp_path / "whole").iterdir()
    a, ckpt = load_model(run_dir / "svhn-multi_model.pkl")
    b, _ = load_model(whole_dir / "svhn-multi_model.pkl")
    assert (ckpt["config"]["channels"], ckpt["config"]["height"], ckpt["config"]["width"],
            ckpt["epoch"]) == (3, 54, 54, 2)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
