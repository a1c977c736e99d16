"""The classifier's glimpses as a picture: the DRAW paper's Figure 4.

Figure 4 shows, for a few cluttered MNIST test images, the succession of glimpses the
classifier takes, each drawn as a rectangle over the image. Here every row is one image and
every column one glimpse t = 1..T; the box outlines the read window of that glimpse, N * delta
pixels wide around its centre (draw/outputs/plotting.py, `window_box`). The paper's boxes are
green with the filters' width shown by the line width; these are the project's one-pixel red
boxes, and sigma is not drawn.
"""
import torch
from PIL import Image

from draw.classifier import ClassifierConfig
from draw.outputs.plotting import check_picture_size, grid_size, sequence_strip

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
    """One row per image, one column per glimpse, the glimpse's read window boxed: an "RGB"
    picture of n rows and T columns of cells.

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
    """
    images = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if images.dim() != 4:
        raise ValueError(f"images must have shape (n, C, H, W), got {tuple(images.shape)}")
    n, C, H, W = images.shape
    T = attention["center_y"].shape[0]
    if any(tuple(attention[k].shape) != (T, n) for k in ("center_y", "center_x", "delta")):
        raise ValueError(f"attention entries must have shape (T, n) with n = {n} images")
    # every glimpse sees the same image: a drawing whose canvas never changes
    canvases = images.reshape(1, n, C * H * W).expand(T, n, C * H * W)   # (T, n, C*H*W)
    return sequence_strip(canvases, (C, H, W), range(T), attention, N=N, scale=scale)
