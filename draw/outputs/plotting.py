"""Image outputs in pure Python (Pillow): sample grids, PNG and GIF files, attention boxes.

The classic repository built its animations with ImageMagick (`convert -delay ...`); here every
picture is a PIL image and every file is written atomically (draw/atomic.py), so an interrupted
run never leaves a half-written PNG or GIF behind.

Conventions
-----------
Images are float in [0, 1], shape (n, C, H, W) with C = 1 (grey) or 3 (RGB). Pixel coordinates
are 0-based and vertical comes first, as in draw/attention.py.
"""
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from draw.atomic import atomic_path
from draw.errors import DrawError

# the classic repository's grid background: dark grey separators between the cells
SEPARATOR = 0.2
BOX_COLOR = (255, 0, 0)
# GIF stores each side in 16 bits (matplotlib's Agg has the same limit); beyond MAX_PIXELS Pillow
# warns that a file may be a decompression bomb when it reads it, and refuses twice that
MAX_SIDE = 65535
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# GIF stores a frame's delay in 16 bits of hundredths of a second, and Pillow merges identical
# consecutive frames, adding their delays: past this in all, a GIF of identical frames fails
MAX_GIF_MS = 65535 * 10
# a progress bar appears only when a stage takes longer than this (seconds), and only on a
# terminal (tqdm's disable=None): in a log file its carriage-return frames would be noise
BAR_DELAY = 2.0


class PictureSizeError(DrawError):
    """A picture too large to write as a file that can be opened again."""


def check_picture_size(width: int, height: int, what: str) -> None:
    """Refuse, before anything is drawn, a picture no GIF can hold or Pillow would not open;
    `what` names the picture and the flags that set its size, for the message."""
    if width < 1 or height < 1:
        raise PictureSizeError(f"{what} would be empty ({width}x{height} pixels)")
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise PictureSizeError(f"{what} would be {width:,}x{height:,} pixels; pictures are limited "
                               f"to {MAX_SIDE:,} pixels a side and {MAX_PIXELS:,} in all")


def check_gif_duration(frames: int, duration_ms: int, hold_last_ms: int, what: str) -> None:
    """Refuse, before anything is drawn, a GIF that `save_gif` could not write: its frames'
    durations (as `save_gif` takes them), merged where frames are identical, must fit GIF's
    delay field (MAX_GIF_MS). `what` names the GIF and the flags that set its length."""
    total = (frames - 1) * duration_ms + hold_last_ms
    if total > MAX_GIF_MS:
        raise PictureSizeError(f"{what} would last {total:,} ms; a GIF holds at most "
                               f"{MAX_GIF_MS:,} ms of identical frames")


def grid_size(rows: int, cols: int, height: int, width: int) -> tuple[int, int]:
    """(width, height) in pixels of `image_grid`'s picture of rows x cols cells of height x width."""
    return cols * (width + 1) - 1, rows * (height + 1) - 1


def _to_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.float32).numpy()
    return np.asarray(array, dtype=np.float32)


def grid_shape(n: int) -> tuple[int, int]:
    """The most nearly square (rows, cols) grid with rows <= cols that holds n images."""
    if n < 1:
        raise ValueError(f"need at least one image for a grid, got n={n}")
    rows = math.isqrt(n)
    return rows, math.ceil(n / rows)


def image_grid(images, rows: int, cols: int) -> Image.Image:
    """Tile `images`, (n, C, H, W) float in [0, 1] (clipped), row by row into a rows x cols
    picture with 1-pixel separators: (width, height) = (cols*W + cols-1, rows*H + rows-1), an
    "L" image for C = 1, "RGB" for C = 3. Cells after the n-th stay background grey."""
    images = _to_numpy(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (n, C, H, W) with C = 1 or 3, "
                         f"got {images.shape}")
    n, C, H, W = images.shape
    if rows < 1 or cols < 1 or n > rows * cols:
        raise ValueError(f"{n} images do not fit a {rows}x{cols} grid")
    grid = np.full((C, rows * (H + 1) - 1, cols * (W + 1) - 1), SEPARATOR, dtype=np.float32)
    for k in range(n):
        top, left = (k // cols) * (H + 1), (k % cols) * (W + 1)
        grid[:, top:top + H, left:left + W] = images[k]
    grid = np.rint(np.clip(grid, 0.0, 1.0) * 255).astype(np.uint8)       # (C, rows*(H+1)-1, ...)
    if C == 1:
        return Image.fromarray(grid[0], mode="L")
    return Image.fromarray(grid.transpose(1, 2, 0), mode="RGB")


def check_output_dir(output_dir: str | os.PathLike) -> None:
    """Refuse, before any work, an --output-dir that names something other than a folder (or a
    folder still to be made); `save_png` and `save_gif` would fail only after it."""
    for folder in (Path(output_dir), *Path(output_dir).parents):
        if folder.exists():
            if not folder.is_dir():
                raise DrawError(f"--output-dir {output_dir}: {folder} is a file, not a folder")
            return


class OutputPathError(DrawError):
    """An output file that cannot be written, or whose writing would destroy another file."""


def check_output_files(outputs: Iterable[tuple[str, str | os.PathLike]],
                       inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, output files that the command could not write or whose writing
    would destroy a file it needs: a path that is a folder, that is one of the files it reads
    (`inputs`, however spelled: a link or a relative path too), that repeats an earlier output
    (one picture would replace the other) or lies in a folder another output names as its file,
    or whose folder is neither there nor creatable (a file in the way) or not writable. A
    missing folder is fine: `save_png` and the other writers create it.

    `outputs` are (flag, path) pairs; the flag, which set the path, leads the message.
    """
    inputs = [source for source in inputs if os.path.exists(source)]
    files, folders, probed = {}, {}, set()      # outputs' real paths, and their folders: flags
    for flag, given in outputs:
        path, what = Path(given), f"{flag} {os.fspath(given)}"     # the message: as spelled
        if path.is_dir():
            raise OutputPathError(f"{what} is a folder; name a file to write")
        if path.exists():
            for source in inputs:
                if os.path.samefile(path, source):
                    raise OutputPathError(f"{what} is {os.fspath(source)}, a file this command "
                                          f"reads; writing it would replace it")
        # hard links are one file under two names: compare those by inode, the rest by path
        real = Path(os.path.realpath(path))
        key = (real.stat().st_dev, real.stat().st_ino) if real.exists() else real
        if key in files:
            raise OutputPathError(f"{what} is also the file of {files[key]}; each output needs "
                                  f"its own file")
        if real in folders:
            raise OutputPathError(f"{what} is the folder that the file of {folders[real]} "
                                  f"goes into")
        for folder in real.parents:
            if folder in files:
                raise OutputPathError(f"{what}: its folder {folder} is the file of "
                                      f"{files[folder]}")
        files[key] = flag
        folders.update(dict.fromkeys(real.parents, flag))
        _check_folder(what, path.parent, probed)


def _check_folder(what: str, folder: Path, probed: set[Path]) -> None:
    """Refuse `folder` unless its nearest existing ancestor is a folder that takes a new file,
    which a real file tells best: it knows read-only mounts, ACLs and root's rights alike."""
    ancestor = next((a for a in (folder, *folder.parents) if a.exists()), folder)
    if ancestor in probed:
        return
    if not ancestor.is_dir():
        raise OutputPathError(f"{what}: {os.fspath(ancestor)} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=ancestor):      # nameless (O_TMPFILE) where Linux can
            pass
    except OSError as e:
        raise OutputPathError(f"{what}: cannot write into {os.fspath(ancestor)} "
                              f"({e.strerror or e})") from None
    probed.add(ancestor)


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """Write `image` as a PNG file, atomically; missing parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def save_gif(frames: list[Image.Image], path: str | os.PathLike, duration_ms: int = 100,
             hold_last_ms: int = 1000) -> None:
    """Write `frames` (of one size) as a looping animated GIF, atomically: every frame shown
    `duration_ms`, the last one `hold_last_ms`, so the finished drawing stays on screen before the
    loop starts over. Pillow stores consecutive identical frames once, their durations added."""
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    sizes = {frame.size for frame in frames}
    if len(sizes) != 1:
        raise ValueError(f"all GIF frames must have one size, got {sorted(sizes)}")
    if duration_ms < 10 or hold_last_ms < 10:
        # GIF stores delays in hundredths of a second; below 10 ms browsers substitute their own
        raise ValueError(f"frame durations must be at least 10 ms, got {duration_ms} and "
                         f"{hold_last_ms}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [duration_ms] * (len(frames) - 1) + [hold_last_ms]
    # Pillow quantises the frames as it iterates over them, most of the time of a large GIF
    later = tqdm(frames[1:], desc=f"writing {path.name}", unit="frame", delay=BAR_DELAY,
                 leave=False, disable=None)
    with atomic_path(path) as tmp, later:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=later,
                       duration=durations, loop=0)


def window_box(center_y: float, center_x: float, delta: float, N: int,
               scale: int = 1) -> tuple[int, int, int, int]:
    """The pixel rectangle (x0, y0, x1, y1), inclusive, that outlines an N x N attention window.

    The window's grid points lie at center + (i - N/2 - 0.5) * delta, i = 1..N (eqs. 19-20), from
    center - (N-1)/2 delta to center + (N-1)/2 delta. Each filter gathers about one stride around
    its point, so the window is that span widened by half a stride on each side:
    [center - N delta / 2, center + N delta / 2], N * delta pixels wide. The box is drawn on the
    outermost pixels whose centres lie in that span; a window narrower than a pixel is drawn on
    the pixel that holds its centre. Coordinates may fall outside the image (see `draw_box`).

    The centre is in 0-based pixels of the original image, delta in pixels. With `scale` the
    image is drawn enlarged (pixel k covers scaled pixels k*scale .. k*scale + scale - 1) and the
    box is returned in scaled pixels: columns x0..x1 and rows y0..y1, both inclusive.
    """
    half = N * delta / 2

    def edges(center: float) -> tuple[int, int]:
        # scaled pixel centres sit at integers: original coordinate u maps to s (u + 1/2) - 1/2
        lo = scale * (center - half + 0.5) - 0.5
        hi = scale * (center + half + 0.5) - 0.5
        # the tolerance keeps an edge that lies on a pixel centre from flipping with rounding noise
        first, last = math.ceil(lo - 1e-6), math.floor(hi + 1e-6)
        if first > last:
            first = last = math.floor(scale * (center + 0.5))   # nearest scaled pixel
        return first, last

    x0, x1 = edges(center_x)
    y0, y1 = edges(center_y)
    return x0, y0, x1, y1


def sampling_frames(canvases, shape: tuple[int, int, int], rows: int, cols: int,
                    attention: dict | None = None, N: int | None = None,
                    scale: int = 1) -> list[Image.Image]:
    """One grid picture per drawing step, optionally with every sample's write window boxed:
    n_iter frames, "RGB" with boxes, otherwise as `image_grid`.

    Parameters
    ----------
    canvases : Tensor or ndarray, shape (n_iter, n, C*H*W), float in [0, 1]
        The canvases sigma(c_t) of `DrawModel.sample`, of images of `shape` (C, H, W), in a
        rows x cols grid.
    attention : dict of Tensor, each of shape (n_iter, n), optional
        The write windows of `DrawModel.sample(..., return_attention=True)`; uses 'center_y',
        'center_x' and 'delta'. Frame t boxes the window that wrote step t (see `window_box`).
    N : int, optional
        Write grid size (the model's config.write_N); required with `attention`.
    scale : int
        Enlarge every image `scale` times (nearest neighbour) so that boxes can sit between the
        original pixels; the separators stay 1 pixel wide.
    """
    canvases = _to_numpy(canvases)
    C, H, W = shape
    if canvases.ndim != 3 or canvases.shape[2] != C * H * W:
        raise ValueError(f"canvases must have shape (n_iter, n, {C * H * W}) for images of "
                         f"shape {tuple(shape)}, got {canvases.shape}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if attention is not None and N is None:
        raise ValueError("drawing attention boxes needs the write grid size N")
    n_iter, n = canvases.shape[:2]
    images = canvases.reshape(n_iter, n, C, H, W)
    images = images.repeat(scale, axis=3).repeat(scale, axis=4)           # (T, n, C, sH, sW)
    frames = (image_grid(images[t], rows, cols) for t in range(n_iter))  # one at a time
    if attention is None:
        return list(frames)
    return [_boxed(frame, {k: v[t] for k, v in attention.items()}, cols, (scale * H, scale * W),
                   N, scale) for t, frame in enumerate(frames)]


def _boxed(frame: Image.Image, windows: dict, cols: int, cell: tuple[int, int], N: int,
           scale: int) -> Image.Image:
    """`frame` in RGB with the window of each sample k ((n,) entries of `windows`) boxed in its
    cell (cell[0] x cell[1] pixels) of the grid."""
    pixels = np.array(frame.convert("RGB"))                               # (rows*(sH+1)-1, ..., 3)
    (h, w), n = cell, len(windows["center_y"])
    for k in range(n):
        box = window_box(float(windows["center_y"][k]), float(windows["center_x"][k]),
                         float(windows["delta"][k]), N, scale)
        top, left = (k // cols) * (h + 1), (k % cols) * (w + 1)
        draw_box(pixels[top:top + h, left:left + w], box)
    return Image.fromarray(pixels, mode="RGB")


def sequence_strip(canvases, shape: tuple[int, int, int], steps, attention: dict | None = None,
                   N: int | None = None, scale: int = 1) -> Image.Image:
    """Samples being drawn, as in the paper's figures: one row per sample, one column per step
    of `steps` (a sequence of step indices; end with n_iter - 1 for the finished drawing), each
    cell with the window that wrote that step boxed when `attention` is given.

    `canvases`, `attention`, `N` and `scale` are those of `sampling_frames`, for the samples to
    show. Returns an "RGB" picture with 1-pixel separators between the cells.
    """
    steps = list(steps)
    canvases = _to_numpy(canvases)[steps]                                    # (S, n, C*H*W)
    picked = None if attention is None else {k: v[steps] for k, v in attention.items()}
    columns = sampling_frames(canvases, shape, canvases.shape[1], 1, attention=picked, N=N,
                              scale=scale)
    columns = [np.asarray(column.convert("RGB")) for column in columns]    # (rows, W', 3) each
    gap = np.full((columns[0].shape[0], 1, 3), np.rint(SEPARATOR * 255), dtype=np.uint8)
    parts = [part for column in columns for part in (gap, column)][1:]
    return Image.fromarray(np.concatenate(parts, axis=1), mode="RGB")


def draw_box(cell: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Outline the part of box (x0, y0, x1, y1) (see `window_box`) that lies inside an RGB array
    cell (H, W, 3), in BOX_COLOR, in place.

    A window reaching past an edge of the image is outlined along that edge (an untrained model's
    windows are often larger than the whole image, and would otherwise show no box at all); a
    window entirely outside the image draws nothing. Drawn by hand rather than with
    ImageDraw.rectangle, which paints a one-pixel box as two pixels.
    """
    H, W = cell.shape[:2]
    x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], W - 1), min(box[3], H - 1)
    if x0 > x1 or y0 > y1:
        return
    cell[[y0, y1], x0:x1 + 1] = BOX_COLOR
    cell[y0:y1 + 1, [x0, x1]] = BOX_COLOR
