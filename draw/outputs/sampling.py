"""Draw samples from a trained model and write them out: the logic behind `sample.py`.

A sample is the paper's generation process (section 2.3): z_t ~ N(0, I) for t = 1..T, decoded
and written onto the canvas step by step. The files are those of the classic repository:
`sample.png` (the final canvases), `time-NNN.png` (the canvases after step NNN, counted from 0)
and `sequence.gif` (the drawing process, last frame held), optionally with every step's write
window boxed as in the paper's video.
"""
import os
from pathlib import Path

import torch

from draw.errors import DrawError
from draw.model import AttentionWriter, DrawModel
from draw.outputs.plotting import image_grid, sampling_frames, save_gif, save_png


class SamplingError(DrawError):
    """A sampling request the model file cannot serve."""


def check_image_shape(model: DrawModel, path: str | os.PathLike, channels: int | None = None,
                      size: tuple[int, int] | None = None) -> None:
    """Check the classic `--channels` / `--size` flags against the model's own config.

    The config alone defines the model; the flags are kept so that classic command lines still
    work, and a disagreement means the user has the wrong file (or the wrong flags).

    Parameters
    ----------
    model : DrawModel
        Loaded from `path`; its `config` holds the image shape.
    path : path-like
        The model file, for the message.
    channels : int, optional
    size : (height, width), optional
    """
    cfg = model.config
    have = (cfg.channels, cfg.height, cfg.width)
    want = (cfg.channels if channels is None else channels,) + (have[1:] if size is None else size)
    if want != have:
        raise SamplingError(f"{os.fspath(path)} draws {have[0]}x{have[1]}x{have[2]} images "
                            f"(channels x height x width), not the {want[0]}x{want[1]}x{want[2]} "
                            f"asked for by --channels/--size")


def prior_noise(model: DrawModel, n: int, seed: int | None = None) -> torch.Tensor:
    """Standard normal z_1..z_T for n samples, shape (n_iter, n, z_dim), on the model's device.

    Drawn on the CPU from its own generator so that a seed gives the same samples on every
    device and leaves the global random state alone.
    """
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    p = next(model.parameters())
    u = torch.randn((model.n_iter, n, model.sampler.z_dim), generator=generator)
    return u.to(device=p.device, dtype=p.dtype)


def write_samples(model: DrawModel, directory: str | os.PathLike, rows: int, cols: int,
                  n: int | None = None, seed: int | None = None, boxes: bool = False,
                  scale: int = 1, duration_ms: int = 100,
                  hold_last_ms: int = 1000) -> list[Path]:
    """Sample n images and write sample.png, time-NNN.png and sequence.gif into `directory`.

    Parameters
    ----------
    model : DrawModel
        With its `config`; sampled in eval mode on whatever device it lives on.
    directory : path-like
        Created if missing. Existing files of the same names are replaced (atomically).
    rows, cols : int
        Grid shape of every picture.
    n : int, optional
        Number of samples, at most rows * cols; default rows * cols.
    seed : int, optional
        Seed of the prior noise; a fresh one when omitted.
    boxes : bool
        Outline each step's write window on its frame (time-NNN.png and sequence.gif); needs a
        model with write attention. sample.png always shows the bare final canvases.
    scale : int
        Enlarge every image `scale` times (nearest neighbour), for viewing and finer boxes.
    duration_ms, hold_last_ms : int
        GIF timing: every step's frame, and the held last frame.

    Returns
    -------
    list of Path: the files written, sample.png first.
    """
    cfg = model.config
    n = rows * cols if n is None else n
    if n < 1 or n > rows * cols:
        raise SamplingError(f"{n} samples do not fit a {rows}x{cols} grid")
    if boxes and not isinstance(model.writer, AttentionWriter):
        raise SamplingError("--boxes needs a model with write attention; this one writes the "
                            "whole canvas (no --attention at training time)")
    shape = (cfg.channels, cfg.height, cfg.width)
    model.eval()
    u = prior_noise(model, n, seed)
    if boxes:
        canvases, attention = model.sample(n, u, return_attention=True)     # (T, n, x_dim)
    else:
        canvases, attention = model.sample(n, u), None
    canvases = canvases.float().cpu()
    frames = sampling_frames(canvases, shape, rows, cols, attention=attention,
                             N=cfg.write_N, scale=scale)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = canvases[-1].view(n, *shape)                                      # (n, C, H, W)
    final = final.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    written = [directory / "sample.png"]
    save_png(image_grid(final, rows, cols), written[0])
    for t, frame in enumerate(frames):
        written.append(directory / f"time-{t:03d}.png")
        save_png(frame, written[-1])
    written.append(directory / "sequence.gif")
    save_gif(frames, written[-1], duration_ms=duration_ms, hold_last_ms=hold_last_ms)
    return written
