"""The classifier's glimpses as a picture: the DRAW paper's Figure 4.

Figure 4 shows, for a few cluttered MNIST test images, the succession of glimpses the
classifier takes, each drawn as a rectangle over the image. Here every row is one image and
every column one glimpse t = 1..T; the box outlines the read window of that glimpse, N * delta
pixels wide around its centre (draw/outputs/plotting.py, `window_box`). The paper's boxes are
green with the filters' width shown by the line width; these are the project's one-pixel red
boxes, and sigma is not drawn.
"""
import numpy as np
import torch
from PIL import Image

from draw.classifier import ClassifierConfig
from draw.outputs.plotting import check_picture_size, draw_box, grid_size, image_grid, window_box

N_GLIMPSE_IMAGES = 8     # test images in train-classifier.py's picture, one row each


def glimpses_bytes(cfg: ClassifierConfig, what: str) -> int:
    """The bytes of drawing the picture of a classifier of `cfg` over N_GLIMPSE_IMAGES images,
    checked before anything is written; PictureSizeError (one line, starting with `what`) where
    no file can hold it, T glimpses side by side: a classifier train-classifier.py cannot
    train. Per pixel: the cells as float32, the float grid, its clipped copy, and the RGB
    copies the boxes are drawn on (`glimpse_grid`)."""
    width, height = grid_size(N_GLIMPSE_IMAGES, cfg.n_iter, cfg.height, cfg.width)
    check_picture_size(width, height, what)
    return (14 * cfg.channels + 9) * width * height


def glimpse_grid(images, attention: dict, N: int, scale: int = 1) -> Image.Image:
    """One row per image, one column per glimpse, the glimpse's read window boxed.

    Parameters
    ----------
    images : Tensor or ndarray, shape (n, C, H, W), float in [0, 1]
    attention : dict of Tensor, each of shape (T, n)
        'center_y', 'center_x' and 'delta' of every glimpse's window, as
        `AttentionClassifier.forward(x, return_attention=True)` returns them.
    N : int
        The read grid size (the model's config.read_N).
    scale : int
        Enlarge every image `scale` times (nearest neighbour), so that small windows show.

    Returns
    -------
    PIL.Image.Image, "RGB", of n rows and T columns of cells.
    """
    images = torch.as_tensor(images).detach().to("cpu", torch.float32).numpy()
    if images.ndim != 4:
        raise ValueError(f"images must have shape (n, C, H, W), got {images.shape}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    n, C, H, W = images.shape
    T = attention["center_y"].shape[0]
    if any(tuple(attention[k].shape) != (T, n) for k in ("center_y", "center_x", "delta")):
        raise ValueError(f"attention entries must have shape (T, n) with n = {n} images")
    big = images.repeat(scale, axis=2).repeat(scale, axis=3)                # (n, C, sH, sW)
    cells = np.repeat(big, T, axis=0)                                       # (n*T, C, sH, sW)
    pixels = np.array(image_grid(cells, n, T).convert("RGB"))
    for k in range(n):
        for t in range(T):
            box = window_box(float(attention["center_y"][t, k]),
                             float(attention["center_x"][t, k]),
                             float(attention["delta"][t, k]), N, scale)
            top, left = k * (scale * H + 1), t * (scale * W + 1)
            draw_box(pixels[top:top + scale * H, left:left + scale * W], box)
    return Image.fromarray(pixels, mode="RGB")
