"""bench/two_digit_reader.py: crops, the reader's examples, the two-means locator, the verdicts,
and the whole measurement on real MNIST (../shared/data) when it is there."""
import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from draw.checkpoint import save_checkpoint
from draw.datasets import get_data
from draw.datasets.scenes import compose, two_digit_recipe
from draw.errors import DrawError
from draw.model import DrawConfig, DrawModel

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture
def reader(bench_script):
    return bench_script("two_digit_reader")


def numbered_canvases(b: int) -> torch.Tensor:
    """(b, 60, 60) canvases whose every pixel holds its own (canvas, row, col) as a number, so that
    a crop's first pixel tells where it was cut."""
    return torch.arange(b * 3600, dtype=torch.float64).view(b, 60, 60)


def corner_of(crop: torch.Tensor) -> tuple[int, int]:
    """(row, col) of a crop of `numbered_canvases` within its canvas."""
    return divmod(int(crop[0, 0]) % 3600, 60)


def test_crops_are_28x28_windows_at_corners_clamped_into_the_canvas(reader):
    canvases = numbered_canvases(2)
    corners = torch.tensor([[[0, 0], [32, 5]], [[-3, 40], [10, 11]]])
    cut = reader.crops(canvases, corners)
    assert cut.shape == (2, 2, 28, 28)
    assert torch.equal(cut[0, 1], canvases[0, 32:60, 5:33])
    assert torch.equal(cut[1, 0], canvases[1, 0:28, 32:60])       # (-3, 40) clamped to (0, 32)
    assert torch.equal(cut[1, 1], canvases[1, 10:38, 11:39])


def test_training_crops_shift_digits_a_little_and_cut_class_10_near_them_but_off_both(reader):
    b = 400
    canvases = numbered_canvases(b)
    recipe = two_digit_recipe(b, 50, np.random.default_rng(0))
    place = torch.from_numpy(recipe.place)                           # (B, 2, 2)
    labels = torch.randint(0, 10, (b, 2), generator=torch.Generator().manual_seed(1))
    x, y = reader.training_crops(canvases, place, labels, torch.Generator().manual_seed(2))
    assert x.shape[1:] == (28, 28) and len(x) == len(y)
    assert torch.equal(y[:2 * b], labels.flatten())
    shifts = []
    for k in range(2 * b):
        i, j = divmod(k, 2)
        assert int(x[k, 0, 0]) // 3600 == i
        shift = np.subtract(corner_of(x[k]), recipe.place[i, j])
        assert np.abs(shift).max() <= reader.JITTER
        shifts.append(tuple(shift))
    assert len(set(shifts)) == (2 * reader.JITTER + 1) ** 2          # every shift occurs
    near = x[2 * b:]
    assert (y[2 * b:] == reader.NOT_A_DIGIT).all() and b < len(near) <= 2 * b
    offsets = []
    for crop in near:
        i = int(crop[0, 0]) // 3600
        away = np.abs(np.subtract(corner_of(crop), recipe.place[i])).max(axis=1)   # (2,)
        assert (away >= reader.OFF).all() and away.min() <= reader.NEAR
        offsets.append(away.min())
    # the near misses of a split digit are there: off by OFF, in one axis only too
    assert reader.OFF in offsets
    one_axis = [crop for crop in near
                if (np.subtract(corner_of(crop), recipe.place[int(crop[0, 0]) // 3600]) == 0)
                .any()]
    assert len(one_axis) > 0.05 * len(near)


def ink_centre(canvas: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(canvas.shape)
    return np.array([(canvas * rows).sum(), (canvas * cols).sum()]) / canvas.sum()


def test_two_means_are_the_two_digits_centres_of_ink_when_they_lie_apart(reader):
    digits = get_data("sample").train[:40].numpy().reshape(-1, 28, 28)
    recipe = two_digit_recipe(40, 40, np.random.default_rng(5))
    recipe.place[:, 0] = [1, 2]                                      # top left
    recipe.place[:, 1] = [31, 30]                                    # bottom right: no overlap
    canvases = torch.from_numpy(compose(digits, recipe, np.arange(40))).double().div(255)
    means = reader.two_means(canvases.view(-1, 60, 60))              # (40, 2, 2)
    for i in range(40):
        expected = [ink_centre(digits[recipe.source[i, p]] / 255) + recipe.place[i, p]
                    for p in range(2)]
        got = sorted(means[i].tolist())                              # top-left digit first
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_two_means_of_an_empty_canvas_are_its_centre(reader):
    means = reader.two_means(torch.zeros(3, 60, 60))
    assert torch.equal(means, torch.full((3, 2, 2), 29.5))


def test_read_two_cuts_around_the_located_digits_and_reports_the_readers_classes(reader):
    digits = get_data("sample").train[:20].numpy().reshape(-1, 28, 28)
    recipe = two_digit_recipe(20, 20, np.random.default_rng(6))
    recipe.place[:, 0] = [0, 3]
    recipe.place[:, 1] = [32, 28]
    canvases = torch.from_numpy(compose(digits, recipe, np.arange(20))).float().div(255)

    class Sum(torch.nn.Module):
        """Reads a crop by its ink: class 3 for more than 40 pixels' worth, else 10."""
        def forward(self, x):
            ink = x.sum(dim=(1, 2))
            return torch.nn.functional.one_hot(torch.where(ink > 40, 3, 10), 11).float() * 9

    corners, classes, probabilities = reader.read_two(Sum(), canvases.view(-1, 60, 60), batch=7)
    means = reader.two_means(canvases.view(-1, 60, 60))
    assert torch.equal(corners, (means - 14).round().long())
    # MNIST centres a digit's centre of mass in its box: the crops land within 2 px of the places
    found = corners.sort(dim=1).values.numpy()
    assert np.abs(found - recipe.place).max() <= 2
    ink = reader.crops(canvases.view(-1, 60, 60), corners).sum(dim=(2, 3))
    assert torch.equal(classes, torch.where(ink > 40, 3, 10))
    assert torch.allclose(probabilities, torch.full_like(probabilities, 1 / (1 + 10 * np.exp(-9))))


def test_a_canvas_reads_as_two_digits_only_when_both_crops_do(reader):
    classes = torch.tensor([[3, 5], [3, 10], [7, 7], [2, 4]])
    probabilities = torch.tensor([[0.9, 0.6], [0.9, 0.9], [0.49, 0.99], [0.5, 0.5]])
    read = reader.read_as_digits(classes, probabilities, 0.5)
    assert read.tolist() == [[True, True], [True, False], [False, True], [True, True]]
    assert read.all(dim=1).tolist() == [True, False, False, True]


def test_digit_shares_count_only_the_crops_read_as_digits(reader):
    classes = torch.tensor([[3, 5], [3, 10], [7, 7], [3, 4]])
    read = torch.tensor([[True, True], [True, False], [False, True], [True, False]])
    shares = reader.digit_shares(classes, read)
    expected = torch.zeros(10, dtype=torch.float64)
    expected[[3, 5, 7]] = torch.tensor([3, 1, 1], dtype=torch.float64) / 5
    torch.testing.assert_close(shares, expected, rtol=0, atol=0)
    # nothing read: no shares, not a division by zero
    assert reader.digit_shares(classes, torch.zeros_like(read)).sum() == 0


def test_total_variation_is_the_largest_difference_over_sets_of_digits(reader):
    p = torch.zeros(10, dtype=torch.float64)
    q = torch.zeros(10, dtype=torch.float64)
    p[[0, 1, 2]] = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q[[0, 1, 3]] = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    # {0, 2} gets 0.7 from p and 0.2 from q
    assert reader.total_variation(p, q) == pytest.approx(0.5)
    assert reader.total_variation(q, p) == pytest.approx(0.5)
    assert reader.total_variation(p, p) == 0
    one, other = torch.eye(10, dtype=torch.float64)[:2]
    assert reader.total_variation(one, other) == 1


def test_read_right_takes_the_labels_in_either_order(reader):
    classes = torch.tensor([[3, 5], [5, 3], [3, 3], [3, 10], [1, 1]])
    labels = torch.tensor([[5, 3], [5, 3], [3, 5], [3, 5], [1, 1]])
    assert reader.read_right(classes, labels).tolist() == [True, True, False, False, True]


def test_confidence_flag_takes_probabilities_only(reader):
    assert reader.confidence_type("0.9") == 0.9 and reader.confidence_type("1") == 1
    for bad in ("0", "-0.1", "1.5", "nan", "inf", "high"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a probability"):
            reader.confidence_type(bad)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST not found at {SHARED_MNIST}")
def test_the_whole_measurement_on_real_mnist(reader, tmp_path, capsys):
    root = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "draw.datasets", "convert", "mnist", "--from",
                    str(SHARED_MNIST), "--root", str(root)], check=True, capture_output=True)
    torch.manual_seed(0)
    model = DrawModel.from_config(DrawConfig(height=60, width=60, n_iter=2, enc_dim=8, dec_dim=8,
                                             z_dim=2, read_N=2, write_N=5))
    save_checkpoint(tmp_path / "m_model.pkl", model)
    out = tmp_path / "read.png"
    model_file = str(tmp_path / "m_model.pkl")
    result = reader.main([model_file], n=100, reader_canvases=15000, reader_epochs=1,
                         confidence=0.5, temperatures=(1.0, 0.5), data_dir=str(root),
                         out=str(out))
    text = capsys.readouterr().out
    share = float(text.split("the reader reads ")[1].split("%")[0]) / 100
    assert share > 0.7                                               # chance: 1 in 10
    rows = ["valid images", "valid images, first digit only", f"{model_file}: reconstructions",
            f"{model_file}: samples", f"{model_file}: samples at temperature 0.5"]
    assert list(result) == [key for row in rows for key in (row, f"{row}: digits off")]
    assert result["valid images: digits off"] == 0
    # one digit reads as two far less often than two do
    assert result["valid images, first digit only"] < result["valid images"] / 4
    # most of the data's canvases read as two digits, even with a reader trained this briefly
    assert result["valid images"] > 0.5
    # five blocks of 30 canvases, 10 a row, 3 times enlarged
    assert Image.open(out).size == ((10 * 61 - 1) * 3, 5 * (3 * 61 - 1) * 3)

    small = DrawModel.from_config(DrawConfig(n_iter=1, enc_dim=4, dec_dim=4, z_dim=2))
    save_checkpoint(tmp_path / "s_model.pkl", small)
    with pytest.raises(DrawError, match="not two-digit MNIST's 1x60x60"):
        reader.main([model_file, str(tmp_path / "s_model.pkl")], data_dir=str(root))
