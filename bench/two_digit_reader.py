"""How many of a two-digit model's samples show two recognisable digits (issue 25, the paper's
Figure 8): a number for what the eye judges on a sample grid, measured the same way on the data.

    python bench/two_digit_reader.py runs/RUN/NAME_model.pkl [MORE_MODELS ...] --out read.png

1. A reader: a small convolutional classifier of 11 classes, trained on 28x28 crops of
   two-digit-mnist's own training canvases (composed again from mnist by their recipe,
   draw/datasets/scenes.py): a crop at each digit's place, shifted by up to `JITTER` pixels
   (class: that digit, with whatever of the other digit falls into the crop), and a crop near
   each digit but `OFF` pixels or more from both, in rows or in columns (class 10: no digit
   centred here; such crops are what two means make of one digit split in two).
2. A locator: two means of each canvas's ink (pixel coordinates weighted by intensity), and a
   28x28 crop centred on each (MNIST centres every digit's centre of mass in its 28x28 box).
3. A canvas reads as two digits when both crops read as a digit 0-9 with probability at least
   `--confidence`: 0.7 by default, where a poor model's blobs mostly do not read as digits and
   one digit alone reads as two on about 1% of canvases (doc/development.md has other levels).

It prints the share of canvases that read as two digits for the first N valid images (and the
share that does so with both labels right, in either order), the same canvases with their first
digit only (the measure's floor: one digit read as two), each model's reconstructions of the
valid images (z from Q, so the right labels are known too), and N samples from its prior. The
data's share is what a model drawing as the data do would score (canvases whose digits overlap
read as two digits less often); the reconstructions are the fairer yardstick for the samples:
both are sigmoid(c_T), the same faint haze. `--temperatures 1,0.7` also reads the samples of
the same draws of z scaled by 0.7 (sample.py --temperature), where the decoder meets z nearer
the prior's mode. Its "digits off" column is the total variation between the digits 0-9 read
in each row and in the data (half the sum of the differences of their shares): 0 for the same
mix, 1 for digits the data never show, blank where nothing reads as a digit. Two independent
sets of 2,000 canvases of one mix differ by about 3% by chance; a model's reconstructions, of
the data's own canvases, by less.
"""
import argparse
import math

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from draw.checkpoint import build_model, load_checkpoint
from draw.cli import ArgumentParser, positive, run, seed as seed_type, temperature_list
from draw.datasets import get_data
from draw.datasets.scenes import (DIGIT, TWO_DIGIT_CANVAS, Recipe, compose,
                                  two_digit_split_recipe)
from draw.errors import DrawError
from draw.model import DrawModel
from draw.outputs.plotting import BOX_COLOR, check_output_files, draw_box, image_grid, save_png

NOT_A_DIGIT = 10            # the reader's eleventh class
JITTER = 2                  # a digit's crops are shifted by up to this, as the locator errs
OFF = JITTER + 1            # class 10's crops are this far or more off, in rows or in columns
NEAR = DIGIT // 2           # and at most this far off the digit they are cut near
LAST = TWO_DIGIT_CANVAS - DIGIT                 # the largest top-left corner of a crop: 32
SHOWN = 30                  # canvases of each kind in --out's picture
READER_CANVASES = 60_000    # the training canvases whose crops train the reader, by default
READER_EPOCHS = 3           # its passes over them
CONFIDENCE = 0.7            # the probability each crop's digit must reach (the docstring's 3.)


def crops(canvases: Tensor, corners: Tensor) -> Tensor:
    """28x28 crops of (B, 60, 60) `canvases` with top-left corners (B, K, 2) (row, col), each
    clamped into the canvas: (B, K, 28, 28)."""
    corners = corners.clamp(0, LAST)
    span = torch.arange(DIGIT)
    rows = (corners[..., 0, None] + span)[..., :, None]                 # (B, K, 28, 1)
    cols = (corners[..., 1, None] + span)[..., None, :]                 # (B, K, 1, 28)
    b = torch.arange(canvases.shape[0])[:, None, None, None]
    return canvases[b, rows, cols]


def training_crops(canvases: Tensor, place: Tensor, labels: Tensor,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The reader's examples from B canvases (B, 60, 60) whose two digits have top-left corners
    `place` (B, 2, 2) and classes `labels` (B, 2): each digit's crop shifted by up to JITTER in
    rows and columns (its class), and a crop off each digit by OFF to NEAR (class 10), kept where
    it is OFF or more from both digits: (2B + F, 28, 28), (2B + F,) with F <= 2B."""
    b = canvases.shape[0]
    shift = torch.randint(-JITTER, JITTER + 1, (b, 2, 2), generator=generator)
    # the near misses a two-means split of one digit makes: off by d in rows or in columns (a
    # random one, either way) and by up to d in the other, d from OFF to NEAR
    d = torch.randint(OFF, NEAR + 1, (b, 2, 1), generator=generator)
    sign = torch.randint(0, 2, (b, 2, 1), generator=generator) * 2 - 1
    other = (torch.rand((b, 2, 1), generator=generator) * (2 * d + 1)).long() - d   # -d..d
    axis = torch.randint(0, 2, (b, 2, 1), generator=generator).bool()
    offset = torch.where(axis, torch.cat([other, sign * d], 2), torch.cat([sign * d, other], 2))
    off = (place + offset).clamp(0, LAST).view(2 * b, 1, 2)                      # (2B, 1, 2)
    # measured after the clamp, against both digits of the crop's own canvas
    apart = (off - place.repeat_interleave(2, dim=0)).abs().amax(dim=2).min(dim=1).values
    kept = apart >= OFF                                                          # (2B,)
    digits = crops(canvases, place + shift).flatten(0, 1)                        # (2B, 28, 28)
    owner = torch.arange(2 * b)[kept] // 2                                       # (F,) canvas
    near = crops(canvases[owner], off[kept])[:, 0]                               # (F, 28, 28)
    return (torch.cat([digits, near]),
            torch.cat([labels.flatten(), labels.new_full((len(near),), NOT_A_DIGIT)]))


class Reader(nn.Module):
    """28x28 crops (B, 28, 28) in [0, 1] -> logits (B, 11): two 5x5 convolutions with max
    pooling, then two linear layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.hidden = nn.Linear(32 * 7 * 7, 128)
        self.out = nn.Linear(128, NOT_A_DIGIT + 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x[:, None])), 2)             # (B, 16, 14, 14)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)                      # (B, 32, 7, 7)
        return self.out(F.relu(self.hidden(h.flatten(1))))


def train_reader(digits: np.ndarray, labels: Tensor, n_canvases: int, epochs: int, seed: int,
                 batch: int = 100) -> Reader:
    """A Reader trained by Adam for `epochs` passes over crops of the first `n_canvases`
    training canvases, composed from mnist's training `digits` (M, 28, 28) with `labels` (M,);
    each pass draws new shifts and class-10 crops."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    recipe = two_digit_split_recipe("train", len(digits))
    reader = Reader()
    optimizer = torch.optim.Adam(reader.parameters(), lr=1e-3)
    n = min(n_canvases, len(recipe))
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(epochs)])
    for start in tqdm(range(0, len(order), batch), desc="training the reader", unit="batch",
                      delay=2, disable=None):
        index = order[start:start + batch]
        canvases = torch.from_numpy(compose(digits, recipe, index.numpy())).float().div_(255)
        x, y = training_crops(canvases.view(-1, TWO_DIGIT_CANVAS, TWO_DIGIT_CANVAS),
                              torch.from_numpy(recipe.place[index.numpy()]),
                              labels[torch.from_numpy(recipe.source[index.numpy()])], generator)
        loss = F.cross_entropy(reader(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return reader.eval()


def two_means(canvases: Tensor, iterations: int = 10) -> Tensor:
    """The two means of each canvas's ink, (B, H, W) -> (B, 2, 2) (row, col), by Lloyd's
    iterations from the centre of ink plus and minus the ink's spread along its principal axis;
    a canvas without ink gives its centre twice."""
    b, h, w = canvases.shape
    grid = torch.stack(torch.meshgrid(torch.arange(h, dtype=canvases.dtype),
                                      torch.arange(w, dtype=canvases.dtype),
                                      indexing="ij"), dim=-1).view(1, h * w, 2)   # (1, HW, 2)
    ink = canvases.reshape(b, h * w, 1)
    mass = ink.sum(dim=1).clamp_min(torch.finfo(ink.dtype).tiny)                  # (B, 1)
    centre = (ink * grid).sum(dim=1) / mass                                       # (B, 2)
    centre = torch.where(ink.sum(dim=1) > 0, centre, centre.new_tensor([(h - 1) / 2, (w - 1) / 2]))
    d = grid - centre[:, None]                                                    # (B, HW, 2)
    cov = (ink * d).transpose(1, 2) @ d / mass[:, :, None]                        # (B, 2, 2)
    values, vectors = torch.linalg.eigh(cov)                                      # ascending
    axis = vectors[..., -1] * values[:, -1:].clamp_min(0).sqrt()                  # (B, 2)
    means = torch.stack([centre - axis, centre + axis], dim=1)                    # (B, 2, 2)
    for _ in range(iterations):
        near = torch.cdist(grid.expand(b, -1, -1), means).argmin(dim=2)           # (B, HW)
        member = F.one_hot(near, 2).to(ink.dtype) * ink                           # (B, HW, 2)
        weight = member.sum(dim=1)                                                # (B, 2)
        moved = member.transpose(1, 2) @ grid[0] / weight.clamp_min(
            torch.finfo(ink.dtype).tiny)[..., None]                               # (B, 2, 2)
        means = torch.where(weight[..., None] > 0, moved, means)
    return means


@torch.no_grad()
def read_two(reader: Reader, canvases: Tensor, batch: int = 500) -> tuple[Tensor, Tensor, Tensor]:
    """Each canvas's (B, 60, 60) two located crops read: their top-left corners (B, 2, 2), their
    classes (B, 2) and the classes' probabilities (B, 2)."""
    corners, classes, probabilities = [], [], []
    for part in canvases.split(batch):
        # MNIST puts a digit's centre of mass at (14, 14) of its box
        at = (two_means(part) - DIGIT / 2).round().long().clamp(0, LAST)       # (b, 2, 2)
        p = F.softmax(reader(crops(part, at).flatten(0, 1)), dim=1)            # (2b, 11)
        top, cls = p.max(dim=1)
        corners.append(at)
        classes.append(cls.view(-1, 2))
        probabilities.append(top.view(-1, 2))
    return torch.cat(corners), torch.cat(classes), torch.cat(probabilities)


def reading_picture(canvases: Tensor, corners: Tensor, classes: Tensor, read: Tensor,
                    cols: int = 10, scale: int = 3) -> Image.Image:
    """The canvases (n, 60, 60) in a grid, `scale` times enlarged, each crop that `read` ((n, 2)
    bool) as a digit boxed and labelled with its class."""
    n = canvases.shape[0]
    grid = image_grid(canvases[:, None], -(-n // cols), cols).convert("RGB")
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    pixels = np.array(grid)
    cell = (TWO_DIGIT_CANVAS + 1) * scale                    # a canvas and its separator
    labels = []
    for k, j in read.nonzero().tolist():
        top, left = (k // cols) * cell, (k % cols) * cell
        r, c = (corners[k, j] * scale).tolist()
        size = DIGIT * scale
        draw_box(pixels[top:top + TWO_DIGIT_CANVAS * scale, left:left + TWO_DIGIT_CANVAS * scale],
                 (c, r, c + size - 1, r + size - 1))
        labels.append(((left + c + 2, top + r + 1), str(int(classes[k, j]))))
    picture = Image.fromarray(pixels, mode="RGB")
    pen = ImageDraw.Draw(picture)
    for at, text in labels:
        pen.text(at, text, fill=BOX_COLOR)
    return picture


def read_as_digits(classes: Tensor, probabilities: Tensor, confidence: float) -> Tensor:
    """Whether each crop reads as a digit, 0-9 with probability at least `confidence`: (B, 2)
    bool; a canvas reads as two digits where both do."""
    return (classes != NOT_A_DIGIT) & (probabilities >= confidence)


def digit_shares(classes: Tensor, read: Tensor) -> Tensor:
    """The share of each digit 0-9 among the crops that `read` (B, 2) as digits: (10,)."""
    counts = torch.bincount(classes[read], minlength=NOT_A_DIGIT)[:NOT_A_DIGIT].double()
    return counts / counts.sum().clamp(min=1)


def total_variation(p: Tensor, q: Tensor) -> float:
    """Half the sum of the absolute differences of two distributions' shares (10,): the largest
    difference in the probability they give any set of digits."""
    return 0.5 * (p - q).abs().sum().item()


def read_right(classes: Tensor, labels: Tensor) -> Tensor:
    """Whether both classes (B, 2) are the canvas's two labels (B, 2), in either order: (B,)."""
    return (classes.sort(dim=1).values == labels.sort(dim=1).values).all(dim=1)


def confidence_type(text: str) -> float:
    """An argparse type: a probability above 0 and at most 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability above 0 and at most 1, "
                                         f"got {text!r}")
    return value


def two_digit_model(model_file: str) -> DrawModel:
    """The model of `model_file`, in eval mode; DrawError unless it draws 1x60x60 canvases."""
    return check_two_digit(build_model(load_checkpoint(model_file), model_file).eval(),
                           model_file)


def check_two_digit(model: DrawModel, model_file: str) -> DrawModel:
    """`model` (of `model_file`), once it is known to draw 1x60x60 canvases; DrawError else."""
    cfg = model.config
    if (cfg.channels, cfg.height, cfg.width) != (1, TWO_DIGIT_CANVAS, TWO_DIGIT_CANVAS):
        raise DrawError(f"{model_file} models {cfg.channels}x{cfg.height}x{cfg.width} images, "
                        f"not two-digit MNIST's 1x60x60")
    return model


def labelled_mnist(data_dir: str | None):
    """mnist's converted splits with their labels, which the reader learns from; DrawError
    where it was converted without them."""
    mnist = get_data("mnist", root=data_dir)
    if mnist.train_labels is None:
        raise DrawError("mnist was converted without labels (by an earlier version): run "
                        "`python -m draw.datasets convert mnist`")
    return mnist


@torch.no_grad()
def main(model_files: list[str], n: int = 1000, reader_canvases: int = READER_CANVASES,
         reader_epochs: int = READER_EPOCHS, confidence: float = CONFIDENCE, seed: int = 0,
         temperatures: tuple[float, ...] = (1.0,), data_dir: str | None = None,
         out: str | None = None) -> dict[str, float]:
    """Train the reader, read the first `n` valid canvases, the same with their first digit only
    (the measure's false reads), and each model's reconstructions of them and `n` samples at
    each of `temperatures` (the same draws scaled); print and return each row's share of
    canvases read as two digits, and as "ROW: digits off" how far its mix of digits is from the
    valid images' (NaN where nothing reads as a digit)."""
    # both refused before the minutes of training, not after
    check_output_files([] if out is None else [("--out", out)], inputs=model_files)
    models = {path: two_digit_model(path) for path in model_files}
    mnist = labelled_mnist(data_dir)

    def digits_of(split: str) -> np.ndarray:
        return getattr(mnist, split).numpy().reshape(-1, DIGIT, DIGIT)

    with torch.enable_grad():
        reader = train_reader(digits_of("train"), mnist.train_labels.long(), reader_canvases,
                              reader_epochs, seed)
    valid = digits_of("valid")
    recipe = two_digit_split_recipe("valid", len(valid))
    index = np.arange(min(n, len(recipe)))
    images = torch.from_numpy(compose(valid, recipe, index)).float().div_(255)    # (n, 3600)
    labels = mnist.valid_labels.long()[torch.from_numpy(recipe.source[index])]    # (n, 2)
    first = Recipe(recipe.source[:, :1], recipe.cut[:, :1], recipe.place[:, :1], (DIGIT,),
                   recipe.canvas)
    one_digit = torch.from_numpy(compose(valid, first, index)).float().div_(255)  # (n, 3600)
    side = (-1, TWO_DIGIT_CANVAS, TWO_DIGIT_CANVAS)
    # the reader alone, at the digits' true places
    at_place = crops(images.view(side), torch.from_numpy(recipe.place[index]))
    reader_right = (reader(at_place.flatten(0, 1)).argmax(dim=1) == labels.flatten()).float()
    print(f"the reader reads {reader_right.mean():.1%} of the first {len(index)} valid canvases' "
          f"digits right at their places; a canvas reads as two digits when both located crops "
          f"read as a digit with probability >= {confidence}")
    rows = [("valid images", images, labels),
            ("valid images, first digit only", one_digit, None)]
    for path, model in models.items():
        # each model's z from the same seed: its reconstructions' noise first, then its samples'
        generator = torch.Generator().manual_seed(seed)
        u = model.noise(len(index), images, generator)
        recon = torch.sigmoid(model(images, u)[0])                                # (n, 3600)
        rows.append((f"{path}: reconstructions", recon, labels))
        u = model.noise(len(index), images, generator)
        for temperature in temperatures:
            # a copy of the last canvas, so that the other T - 1 are freed
            samples = model.sample(len(index), temperature * u)[-1].clone()
            at = "" if temperature == 1 else f" at temperature {temperature:g}"
            rows.append((f"{path}: samples{at}", samples, None))
    width = max(len(name) for name, _, _ in rows) + 2
    print(f"{'':<{width}}{'canvases':>10}{'two digits':>12}{'and right':>12}"
          f"{'digits off':>12}")
    result, shown, data_digits = {}, [], None
    assert rows[0][0] == "valid images"          # the mix of digits the others are held to
    for name, canvases, known in rows:
        corners, classes, probabilities = read_two(reader, canvases.view(side))
        read = read_as_digits(classes, probabilities, confidence)              # (n, 2)
        two = read.all(dim=1)                                                   # (n,)
        result[name] = two.float().mean().item()
        right = "" if known is None else format((two & read_right(classes, known)).float()
                                                .mean().item(), ".1%")
        # how far the digits it draws are from the data's mix: a narrower mix (at a low
        # temperature, say) reads as two digits more often and is a poorer model of the data
        digits = digit_shares(classes, read)
        data_digits = digits if data_digits is None else data_digits
        off = total_variation(digits, data_digits) if read.any() else float("nan")
        result[f"{name}: digits off"] = off
        shown_off = "" if math.isnan(off) else format(off, ".1%")
        print(f"{name:<{width}}{len(canvases):>10}{result[name]:>12.1%}{right:>12}"
              f"{shown_off:>12}")
        if out is not None:
            shown.append(reading_picture(canvases[:SHOWN].view(side), corners[:SHOWN],
                                         classes[:SHOWN], read[:SHOWN]))
    if out is not None:
        picture = np.concatenate([np.array(block) for block in shown])
        save_png(Image.fromarray(picture, mode="RGB"), out)
        print(f"{out}: the first {SHOWN} of each row, each crop read as a digit boxed with its "
              f"class")
    return result


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_files", nargs="+", metavar="MODEL",
                        help="<name>_model.pkl files of two-digit-mnist models, each read by the "
                             "same reader")
    parser.add_argument("--n", type=positive, default=1000,
                        help="valid canvases, reconstructions and samples to read")
    parser.add_argument("--reader-canvases", type=positive, default=READER_CANVASES,
                        help="training canvases whose crops train the reader")
    parser.add_argument("--reader-epochs", type=positive, default=READER_EPOCHS,
                        help="passes of the reader's training over them")
    parser.add_argument("--confidence", type=confidence_type, default=CONFIDENCE,
                        help="the probability each crop's digit must reach")
    parser.add_argument("--seed", type=seed_type, default=0, help="seed of the reader and of z")
    parser.add_argument("--temperatures", type=temperature_list, default=(1.0,), metavar="TAU,...",
                        help="read the samples drawn from N(0, TAU^2 I) at each: the same draws "
                             "scaled (sample.py --temperature); 1 is the model's")
    parser.add_argument("--data-dir", default=None, help="where the converted datasets are")
    parser.add_argument("--out", default=None,
                        help="a PNG of the first canvases of each kind, their readings boxed")
    run(main, parser.parse_args())
