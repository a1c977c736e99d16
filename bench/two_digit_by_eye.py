"""Issue 25's criterion judged by eye, blind: how many of a two-digit model's samples show two
distinct, recognisable digits, beside its reconstructions and the data, mixed so that whoever
judges does not know which canvas is which.

    python bench/two_digit_by_eye.py sheets MODEL --n 60 --out DIR    # DIR/sheet-*.png, key.json
    python bench/two_digit_by_eye.py score DIR ANSWERS                # the shares of each kind

`sheets` takes the first N valid canvases, the model's reconstructions of the next N (z from Q:
other canvases, so that no canvas has a twin on the sheets to give its kind away) and N samples
of its prior, shuffles the 3N by the seed and numbers them from 1 on sheets of 30. The judge
lists, in the file ANSWERS, the numbers of the canvases that show two digits one can name (any
separators); `score` reads it against DIR/key.json and prints each kind's share. Hand the judge
the sheets only: the key says which canvas is which. What stays visible: the data are crisp,
the reconstructions and samples sigmoid(c_T)'s faint haze, so the blind is between those two.
bench/two_digit_reader.py is the same count by a classifier; this one is the eye it stands in
for.
"""
import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from draw.atomic import atomic_write_bytes
from draw.cli import ArgumentParser, positive, run, seed as seed_type
from draw.cli import temperature as temperature_type
from draw.datasets import batches, get_data
from draw.errors import DrawError
from draw.outputs.plotting import image_grid, save_png
from two_digit_reader import two_digit_model

KINDS = ("data", "reconstruction", "sample")
PER_SHEET = 30              # 5 rows of 6, each canvas enlarged SCALE times
COLS = 6
SCALE = 3
NUMBER_COLOR = (255, 80, 80)


def numbered_sheet(canvases: torch.Tensor, first: int) -> Image.Image:
    """Canvases (n, 60, 60) in [0, 1] in a grid of COLS columns, SCALE times enlarged, each
    numbered in its top-left corner from `first` on."""
    n, height, width = canvases.shape
    grid = image_grid(canvases[:, None], -(-n // COLS), COLS).convert("RGB")
    grid = grid.resize((grid.width * SCALE, grid.height * SCALE), Image.NEAREST)
    pen = ImageDraw.Draw(grid)
    for k in range(n):
        top, left = (k // COLS) * (height + 1) * SCALE, (k % COLS) * (width + 1) * SCALE
        pen.text((left + 2, top + 1), str(first + k), fill=NUMBER_COLOR)
    return grid


@torch.no_grad()
def sheets(model_file: str, out: str, n: int = 60, seed: int = 0, temperature: float = 1.0,
           data_dir: str | None = None) -> list[str]:
    """Write the shuffled, numbered sheets of n data canvases (valid 0 to n-1), n
    reconstructions (of valid n to 2n-1) and n samples (z_t ~ N(0, temperature^2 I)) to `out`,
    and key.json (the kind and index of each number: the valid canvas shown or reconstructed,
    the sample's place); returns the kinds in numbered order. One seed deals the same order and
    draws at every temperature."""
    folder = Path(out)
    # a folder of earlier sheets keeps them: a new key beside old sheets would misread them
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise DrawError(f"--out {out} is not an empty folder")
    model = two_digit_model(model_file)
    valid = get_data("two-digit-mnist", root=data_dir).valid
    if 2 * n > len(valid):
        raise DrawError(f"--n {n} needs {2 * n} of the {len(valid)} valid canvases")
    images = next(batches(valid[:2 * n], 2 * n))                          # (2n, 3600) in [0, 1]
    generator = torch.Generator().manual_seed(seed)
    recon = torch.sigmoid(model(images[n:], model.noise(n, images, generator))[0])
    samples = model.sample(n, temperature * model.noise(n, images, generator))[-1]
    canvases = torch.cat([images[:n], recon, samples]).view(3 * n, 60, 60)
    order = torch.randperm(3 * n, generator=generator).numpy()
    canvases = canvases[order]
    # the k-th number shows `kinds[k]`: valid canvas `index[k]`, its reconstruction, or sample
    kinds = np.repeat(KINDS, n)[order].tolist()
    index = np.where(order < 2 * n, order, order - 2 * n).tolist()
    folder.mkdir(parents=True, exist_ok=True)
    for first in range(0, 3 * n, PER_SHEET):
        path = folder / f"sheet-{first // PER_SHEET + 1}.png"
        save_png(numbered_sheet(canvases[first:first + PER_SHEET], first + 1), path)
    key = {"model": model_file, "n": n, "seed": seed, "temperature": temperature, "kinds": kinds,
           "index": index}
    atomic_write_bytes(folder / "key.json", json.dumps(key).encode())
    print(f"{out}: {-(-3 * n // PER_SHEET)} sheets of {3 * n} canvases numbered 1 to {3 * n} "
          f"({n} each of {', '.join(KINDS)}, shuffled; key.json says which)")
    return kinds


def score(folder: str, answers: str) -> dict[str, float]:
    """Each kind's share of canvases whose numbers the file `answers` lists, printed with its
    standard error."""
    try:
        key = json.loads((Path(folder) / "key.json").read_text())
        kinds = key["kinds"]
        text = Path(answers).read_text()
    except (OSError, ValueError, KeyError) as error:
        raise DrawError(f"cannot read the key or the answers: {error}") from None
    chosen = {int(word) for word in re.findall(r"\d+", text)}
    outside = sorted(k for k in chosen if not 1 <= k <= len(kinds))
    if outside:
        raise DrawError(f"{answers} lists numbers that are on no sheet: {outside[:5]}")
    result = {}
    at = key.get("temperature", 1.0)
    print(f"{key['model']}: canvases judged to show two recognisable digits"
          + ("" if at == 1 else f" (samples at temperature {at:g})"))
    for kind in KINDS:
        numbers = [k + 1 for k, name in enumerate(kinds) if name == kind]
        share = sum(k in chosen for k in numbers) / len(numbers)
        error = math.sqrt(share * (1 - share) / len(numbers))
        result[kind] = share
        print(f"  {kind:<16}{sum(k in chosen for k in numbers):>4} of {len(numbers):<4}"
              f"{share:>7.1%} (standard error {error:.1%})")
    return result


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("sheets", help="write the numbered sheets and their key")
    make.add_argument("model_file", metavar="MODEL", help="a two-digit-mnist <name>_model.pkl")
    make.add_argument("--n", type=positive, default=60, help="canvases of each kind")
    make.add_argument("--out", required=True, help="the folder of the sheets and key.json")
    make.add_argument("--seed", type=seed_type, default=0, help="seed of z and of the order")
    make.add_argument("--temperature", type=temperature_type, default=1.0,
                      help="draw the samples from N(0, TEMPERATURE^2 I) (sample.py "
                           "--temperature); 1 is the model's")
    make.add_argument("--data-dir", default=None, help="where the converted datasets are")
    judge = commands.add_parser("score", help="each kind's share of the judged canvases")
    judge.add_argument("folder", metavar="DIR", help="the folder `sheets` wrote")
    judge.add_argument("answers", metavar="ANSWERS",
                       help="a text file of the numbers judged to show two digits")
    args = vars(parser.parse_args())
    command = args.pop("command")
    run(sheets if command == "sheets" else score, argparse.Namespace(**args))
