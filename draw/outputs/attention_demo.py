"""Read and write with one attention window on a real picture: the logic behind `attention.py`.

The classic repository's `attention.py` opened three windows: the input image, the N x N glimpse
that `read` extracts (eq. 27 without gamma), and what `write` paints back from that glimpse at the
same place (eq. 29 without 1/gamma). This module computes the same three pictures and saves them
as PNG files; `attention.py --show` also puts them on screen.

The shipped picture (draw/data/attention-demo.png) is a public-domain U.S. Navy portrait of
Grace Hopper; see draw/data/attention-demo.md for its provenance.
"""
import math
import os
import warnings
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from draw.attention import ZoomableAttentionWindow
from draw.errors import DrawError
from draw.memory import check_memory
from draw.outputs.display import pyplot_or_warn
from draw.outputs.plotting import (MAX_PIXELS, check_output_dir, check_picture_size, draw_box,
                                   image_grid, save_png, window_box)

# bytes per channel and pixel of the input while the demonstration runs: the float32 image, its
# float64 copy for the filterbanks, the written float64 image and its normalised copy, the
# float32 results and the 8-bit pictures
BYTES_PER_VALUE = 36

DEMO_IMAGE = files("draw") / "data" / "attention-demo.png"
GREY_MODES = ("1", "L", "I", "I;16", "F")


class AttentionDemoError(DrawError):
    """An image that cannot be read, or a window that does not fit it."""


@dataclass(frozen=True)
class Glimpse:
    """The three pictures of the demonstration, float in [0, 1], and the window used."""
    original: torch.Tensor      # (C, H, W) the input image
    read: torch.Tensor          # (C, N, N) the glimpse F_Y x F_X^T
    written: torch.Tensor       # (C, H, W) F_Y^T glimpse F_X over its maximum (`read_and_write`)
    window: tuple[float, float, float, float]   # (center_y, center_x, delta, sigma), pixels


def load_image(path: str | os.PathLike | None = None) -> torch.Tensor:
    """Read a picture Pillow reads (the shipped demo picture when `path` is None) as float
    (C, H, W) in [0, 1]: grey stays C = 1, anything else is RGB."""
    source = DEMO_IMAGE if path is None else Path(path)
    try:
        with warnings.catch_warnings():
            # past MAX_PIXELS Pillow only warns (it refuses at twice that): refuse at once, as
            # this program's pictures are held to the same limit
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                W, H = image.size
                C = 1 if image.mode in GREY_MODES or image.mode.startswith("I;16") else 3
                check_memory(BYTES_PER_VALUE * C * H * W, f"reading the {W:,}x{H:,} image {path}")
                pixels = (_grey_levels(image) if C == 1 else
                          np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    except FileNotFoundError as e:
        raise AttentionDemoError(f"cannot read {path}: no such file") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise AttentionDemoError(f"cannot read {path}: its header claims more than "
                                 f"{MAX_PIXELS:,} pixels, the most this program reads") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise AttentionDemoError(f"cannot read {path} as an image ({e})") from e
    if not np.isfinite(pixels).all():
        raise AttentionDemoError(f"cannot read {path}: it holds values that are not numbers")
    if pixels.ndim == 2:
        pixels = pixels[None]                                                 # (1, H, W)
    else:
        pixels = pixels.transpose(2, 0, 1)                                    # (3, H, W)
    return torch.from_numpy(np.ascontiguousarray(pixels))


def _grey_levels(image: Image.Image) -> np.ndarray:
    """A one-channel `image`'s pixels in [0, 1], each mode by its own range: 16-bit ones (I;16*,
    and I, the mode Pillow gives 16-bit PNGs) over 65535, floats (F) as they are, the rest
    through 8 bits; converting all to L would clip 16-bit pixels to white and floats to black."""
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float32)
    elif image.mode == "I" or image.mode.startswith("I;16"):
        pixels = np.asarray(image, dtype=np.float32) / 65535.0
    else:
        pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return np.clip(pixels, 0.0, 1.0)          # NaN stays, for load_image to refuse


def read_and_write(image: torch.Tensor, N: int, center: tuple[float, float] | None = None,
                   delta: float | None = None, sigma: float | None = None) -> Glimpse:
    """Read an N x N glimpse from `image`, (C, H, W) float in [0, 1], and write it back through
    the same window.

    Parameters
    ----------
    center : (center_y, center_x), optional
        Window centre in 0-based pixels; default the image centre.
    delta : float, optional
        Stride between filters in pixels; default min(H, W) / (2 N), so that the window covers
        the central half of the image.
    sigma : float, optional
        Filter standard deviation in pixels; default delta / 2, enough to blur between the grid
        points without smearing neighbouring filters together.

    Returns
    -------
    Glimpse. The written image is divided by its maximum: `write` of row-normalised filters
    scales the glimpse by how densely the filters cover each pixel, which is the model's own
    business (it learns the intensity), so only the picture's shape is meaningful here.
    """
    C, H, W = image.shape
    if N < 1 or N > min(H, W):
        raise AttentionDemoError(f"N={N} must be between 1 and the image's smaller side "
                                 f"{min(H, W)}")
    center_y, center_x = ((H - 1) / 2, (W - 1) / 2) if center is None else center
    delta = min(H, W) / (2 * N) if delta is None else delta
    sigma = delta / 2 if sigma is None else sigma
    if not (delta > 0 and sigma > 0 and math.isfinite(delta) and math.isfinite(sigma)):
        raise AttentionDemoError(f"delta and sigma must be positive, finite numbers, got "
                                 f"{delta} and {sigma}")
    if not (math.isfinite(center_y) and math.isfinite(center_x)):
        raise AttentionDemoError(f"the centre must be finite, got ({center_y}, {center_x})")
    zoomer = ZoomableAttentionWindow(C, H, W, N)
    window = [torch.tensor([v], dtype=torch.float64) for v in (center_y, center_x, delta, sigma)]
    x = image.to(torch.float64).reshape(1, C * H * W)
    glimpse = zoomer.read(x, *window)                                         # (1, C*N*N)
    written = zoomer.write(glimpse, *window)                                  # (1, C*H*W)
    written = written / written.max().clamp_min(1e-12)
    return Glimpse(original=image,
                   read=glimpse.view(C, N, N).float(),
                   written=written.view(C, H, W).float(),
                   window=(float(center_y), float(center_x), float(delta), float(sigma)))


def save_glimpse(glimpse: Glimpse, directory: str | os.PathLike,
                 read_scale: int = 8) -> list[Path]:
    """Write original.png (the read window outlined), read.png (the N x N glimpse enlarged
    `read_scale` times, so that it can be seen) and write.png into `directory`; return them."""
    C, N, _ = glimpse.read.shape
    check_picture_size(N * read_scale, N * read_scale,
                       f"read.png, the {N}x{N} glimpse at --read-scale {read_scale},")
    center_y, center_x, delta, _ = glimpse.window
    original = np.array(image_grid(glimpse.original[None], 1, 1).convert("RGB"))  # (H, W, 3)
    draw_box(original, window_box(center_y, center_x, delta, N))
    read = glimpse.read.repeat_interleave(read_scale, 1).repeat_interleave(read_scale, 2)
    # every picture is made before the first is written: a failure leaves no partial set
    pictures = (Image.fromarray(original, mode="RGB"), image_grid(read[None], 1, 1),
                image_grid(glimpse.written[None], 1, 1))
    directory = Path(directory)
    paths = [directory / name for name in ("original.png", "read.png", "write.png")]
    for picture, path in zip(pictures, paths):
        save_png(picture, path)
    return paths


def main(image: str | None = None, N: int = 16, center: tuple[float, float] | None = None,
         delta: float | None = None, sigma: float | None = None, output_dir: str = "attention",
         read_scale: int = 8, show: bool = False) -> list[Path]:
    """attention.py: read and write one window on a picture; original.png, read.png and
    write.png in `output_dir`, and on screen with `show`. Returns the files written."""
    check_output_dir(output_dir)
    glimpse = read_and_write(load_image(image), N, center, delta, sigma)
    paths = save_glimpse(glimpse, output_dir, read_scale)
    center_y, center_x, delta, sigma = glimpse.window
    print(f"window: N={N}, center=({center_y:.1f}, {center_x:.1f}), delta={delta:.2f}, "
          f"sigma={sigma:.2f}; wrote {', '.join(str(p) for p in paths)}")
    plt = pyplot_or_warn() if show else None
    if plt is not None:
        for title, picture in zip(("original", "read", "write"),
                                  (glimpse.original, glimpse.read, glimpse.written)):
            plt.figure(title)
            C = picture.shape[0]
            plt.imshow(picture.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if C == 1 else None,
                       vmin=0.0, vmax=1.0, interpolation="nearest")
            plt.title(title)
        plt.show()
    return paths
