"""Draw samples from a trained model and write them out: the logic behind `sample.py`.

A sample is the paper's generation process (section 2.3): z_t ~ N(0, I) for t = 1..T (a
learned prior's N(m_t, s_t) given h_{t-1}^dec), decoded and written onto the canvas step by
step. The files are those of the classic repository:
`sample.png` (the final canvases), `time-NNN.png` (the canvases after step NNN, counted from 0)
and `sequence.gif` (the drawing process, last frame held), optionally with every step's write
window boxed as in the paper's video; and `strip.png`, a few samples at evenly spaced steps side
by side, as in the paper's figures of digits being drawn.

A folder holds one call's frames: `sample.py` removes the time-NNN.png of an earlier call with
more steps, which would otherwise pass for frames of this model.
"""
import os
import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from draw.checkpoint import build_model, file_config, load_checkpoint, resolve_device
from draw.errors import DrawError
from draw.memory import check_inference
from draw.model import DrawConfig, DrawModel
from draw.outputs.plotting import (BAR_DELAY, check_gif_duration, check_output_dir,
                                   check_output_files, check_picture_size, grid_shape, grid_size,
                                   image_grid, sampling_frames, save_gif, save_png,
                                   sequence_strip)

# samples drawn at once: large enough for efficient matrix products, small enough that the
# progress bar moves every few seconds even for big models on a CPU
CHUNK = 1000
STRIP_ROWS, STRIP_STEPS = 8, 16    # strip.png: the first 8 samples at 16 steps
FRAME = re.compile(r"time-(\d{3,})\.png")


class SamplingError(DrawError):
    """A sampling request the model file cannot serve."""


def check_image_shape(cfg: DrawConfig, path: str | os.PathLike, channels: int | None = None,
                      size: tuple[int, int] | None = None) -> None:
    """Check the classic `--channels` / `--size` (height, width) flags against `cfg`, the config
    of the model file `path`. The config alone defines the model; the flags are kept so that
    classic command lines still work, and a disagreement means the wrong file (or flags)."""
    have = (cfg.channels, cfg.height, cfg.width)
    want = (cfg.channels if channels is None else channels,) + (have[1:] if size is None else size)
    if want != have:
        raise SamplingError(f"{os.fspath(path)} draws {have[0]}x{have[1]}x{have[2]} images "
                            f"(channels x height x width), not the {want[0]}x{want[1]}x{want[2]} "
                            f"asked for by --channels/--size")


def sampling_bytes(cfg: DrawConfig, n: int, scale: int = 1) -> int:
    """Estimated bytes that n samples and their pictures keep (`write_samples`), besides the
    model and its pass over CHUNK samples at a time (draw.memory.inference_bytes).

    The prior noise (T, n, z_dim) and the canvases of every step (T, n, x_dim) are kept whole,
    float32; each frame is drawn from them `scale` times enlarged (float32, then 8-bit RGB kept
    for the GIF).
    """
    T, x_dim = cfg.n_iter, cfg.x_dim
    frame = n * x_dim * scale * scale                  # enlarged pixels of one step's grid
    return 4 * T * n * (cfg.z_dim + x_dim) + 4 * (1 + scale) * frame + 3 * T * frame


def prior_noise(model: DrawModel, n: int, seed: int | None = None,
                temperature: float = 1.0) -> torch.Tensor:
    """Standard normal z_1..z_T for n samples, shape (n_iter, n, z_dim), on the model's device,
    times `temperature`: z_t ~ N(0, temperature^2 I), the paper's P(Z_t) at 1 (with a learned
    prior these are z'_t, and z_t ~ N(m_t, temperature^2 s_t^2) given h_{t-1}^dec).

    Drawn on the CPU from its own generator so that a seed gives the same samples on every
    device and leaves the global random state alone; one seed at two temperatures gives the
    same draws scaled, so the two sets of samples pair up.
    """
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    p = next(model.parameters())
    u = model.noise(n, like=torch.empty(0), generator=generator)             # (T, n, Z)
    return (temperature * u).to(device=p.device, dtype=p.dtype)


def draw_samples(model: DrawModel, u: torch.Tensor, attention: bool = False):
    """`model.sample(n, u)` over CHUNK samples of the prior noise `u` (n_iter, n, z_dim) at a time,
    with a progress bar when it takes a while. Returns the canvases (n_iter, n, x_dim), float32,
    and with `attention` the write windows ({name: (n_iter, n)}, else None), on the CPU."""
    n = u.shape[1]
    canvases, windows = [], []
    with tqdm(total=n, desc="sampling", unit="sample", delay=BAR_DELAY, leave=False) as bar:
        for part in u.split(CHUNK, dim=1):                                    # (T, c, Z)
            out = model.sample(part.shape[1], part, return_attention=attention)
            canvas, window = out if attention else (out, None)
            canvases.append(canvas.float().cpu())                             # (T, c, x_dim)
            if attention:
                windows.append({k: v.cpu() for k, v in window.items()})
            bar.update(part.shape[1])
    canvases = torch.cat(canvases, dim=1)
    if not attention:
        return canvases, None
    return canvases, {k: torch.cat([w[k] for w in windows], dim=1) for k in windows[0]}


def write_samples(model: DrawModel, directory: str | os.PathLike, rows: int, cols: int,
                  n: int | None = None, seed: int | None = None, boxes: bool = False,
                  scale: int = 1, duration_ms: int = 100, hold_last_ms: int = 1000,
                  temperature: float = 1.0) -> list[Path]:
    """Sample n images (at most, and by default, rows * cols) in eval mode, and write
    sample.png, time-NNN.png, sequence.gif and strip.png into `directory` (created if missing),
    replacing files of the same names atomically. Returns the files written, sample.png first.

    Parameters
    ----------
    seed : int, optional
        Seed of the prior noise; a fresh one when omitted.
    temperature : float
        Scale of the prior noise (`prior_noise`); 1 samples the model.
    boxes : bool
        Outline each step's write window on its frame (time-NNN.png, sequence.gif and
        strip.png); needs write attention. sample.png always shows the bare final canvases.
    scale : int
        Enlarge every image `scale` times (nearest neighbour), for viewing and finer boxes.
    duration_ms, hold_last_ms : int
        GIF timing: every step's frame, and the held last frame.
    """
    cfg = model.config
    n = rows * cols if n is None else n
    check_request(cfg, rows, cols, n, boxes, scale, device=next(model.parameters()).device,
                  duration_ms=duration_ms, hold_last_ms=hold_last_ms)
    shape = (cfg.channels, cfg.height, cfg.width)
    model.eval()
    canvases, attention = draw_samples(model, prior_noise(model, n, seed, temperature),
                                       attention=boxes)
    directory = Path(directory)
    final = canvases[-1].view(n, *shape)                                      # (n, C, H, W)
    final = final.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    written = [directory / "sample.png"]
    save_png(image_grid(final, rows, cols), written[0])
    frames = _write_frames(canvases, attention, cfg, rows, cols, scale, directory, written)
    written.append(directory / "sequence.gif")
    save_gif(frames, written[-1], duration_ms=duration_ms, hold_last_ms=hold_last_ms)
    written.append(directory / "strip.png")
    save_png(_strip(canvases, attention, cfg, scale), written[-1])
    return written


def _write_frames(canvases: torch.Tensor, attention: dict | None, cfg: DrawConfig, rows: int,
                  cols: int, scale: int, directory: Path, written: list[Path]) -> list:
    """time-NNN.png, one step at a time: only one enlarged float copy of a frame exists at
    once. Returns the frames, for the GIF; appends the files to `written`."""
    frames = []
    shape = (cfg.channels, cfg.height, cfg.width)
    for t in tqdm(range(cfg.n_iter), desc="writing frames", unit="frame", delay=BAR_DELAY,
                  leave=False):
        step = None if attention is None else {k: v[t:t + 1] for k, v in attention.items()}
        frames += sampling_frames(canvases[t:t + 1], shape, rows, cols, attention=step,
                                  N=cfg.write_N, scale=scale)
        written.append(directory / frame_name(t))
        save_png(frames[-1], written[-1])
    return frames


def frame_name(t: int) -> str:
    """The file of the canvases after step t (0-based): time-000.png, time-001.png, ..."""
    return f"time-{t:03d}.png"


def output_files(directory: str | os.PathLike, n_iter: int) -> list[Path]:
    """The files `write_samples` writes into `directory` for a model of n_iter steps, in its
    order: sample.png, the frames, sequence.gif, strip.png."""
    directory = Path(directory)
    return [directory / name for name in ("sample.png", *map(frame_name, range(n_iter)),
                                          "sequence.gif", "strip.png")]


def remove_stale_frames(directory: str | os.PathLike, n_iter: int) -> list[Path]:
    """Delete the frames time-NNN.png, NNN >= n_iter, in `directory`: those of an earlier call
    with more steps, which this call's n_iter frames did not replace. Only files named exactly
    as `frame_name` names them go; returns them, in step order."""
    stale = []
    for path in Path(directory).iterdir():
        match = FRAME.fullmatch(path.name)
        t = int(match[1]) if match else -1
        if t >= n_iter and path.name == frame_name(t) and path.is_file():
            stale.append((t, path))
    stale = [path for _, path in sorted(stale)]
    for path in stale:
        path.unlink()
    return stale


def _strip(canvases: torch.Tensor, attention: dict | None, cfg: DrawConfig, scale: int):
    """The first STRIP_ROWS samples at STRIP_STEPS evenly spaced steps, the last one the
    finished drawing: the paper's figure of digits being drawn, in one picture."""
    T = cfg.n_iter
    steps = np.unique(np.linspace(0, T - 1, min(T, STRIP_STEPS)).round()).astype(int)
    k = min(canvases.shape[1], STRIP_ROWS)
    return sequence_strip(canvases[:, :k], (cfg.channels, cfg.height, cfg.width), steps,
                          None if attention is None else {a: v[:, :k] for a, v in
                                                          attention.items()},
                          N=cfg.write_N, scale=scale)


def check_request(cfg: DrawConfig, rows: int, cols: int, n: int, boxes: bool = False,
                  scale: int = 1, device: torch.device | str | None = None,
                  duration_ms: int = 100, hold_last_ms: int = 1000) -> None:
    """Refuse, before anything is allocated or written, a request that cannot be served:
    samples that do not fit the grid, boxes without write attention, more memory than the
    device has, or pictures too large (or a GIF too long) to write."""
    if n < 1 or n > rows * cols:
        raise SamplingError(f"{n} samples do not fit a {rows}x{cols} grid")
    if boxes and cfg.write_N is None:
        raise SamplingError("--boxes needs a model with write attention; this one writes the "
                            "whole canvas (no --attention at training time)")
    check_inference(cfg, min(n, CHUNK), f"sampling {n:,} image{'s' * (n != 1)} of "
                    f"{cfg.n_iter} steps at --scale {scale}", device,
                    extra=sampling_bytes(cfg, n, scale))
    check_picture_size(*grid_size(rows, cols, scale * cfg.height, scale * cfg.width),
                       f"a {rows}x{cols} grid of {scale * cfg.height}x{scale * cfg.width} images "
                       f"(--n-samples, --grid, --scale)")
    check_gif_duration(cfg.n_iter, duration_ms, hold_last_ms,
                       f"sequence.gif of {cfg.n_iter:,} steps (--duration-ms, --hold-last-ms)")


def main(model_file: str, channels: int | None = None, size: tuple[int, int] | None = None,
         n_samples: int | None = None, grid: tuple[int, int] | None = None,
         seed: int | None = None, output_dir: str = "samples", boxes: bool = False,
         scale: int = 1, duration_ms: int = 100, hold_last_ms: int = 1000,
         temperature: float = 1.0, device: str = "auto") -> list[Path]:
    """sample.py: sample a model file into `output_dir`; every request, and every file to write,
    is checked against the file's config before the model is built. Frames of an earlier call
    with more steps are removed (`remove_stale_frames`). Returns the files written."""
    check_output_dir(output_dir)
    dev = resolve_device(device)
    ckpt = load_checkpoint(model_file)
    cfg = file_config(ckpt, model_file)
    check_image_shape(cfg, model_file, channels, size)
    if grid is None:
        n_samples = n_samples or 100
        grid = grid_shape(n_samples)
    check_request(cfg, *grid, n=n_samples or grid[0] * grid[1], boxes=boxes, scale=scale,
                  device=dev, duration_ms=duration_ms, hold_last_ms=hold_last_ms)
    check_output_files((("--output-dir", path) for path in output_files(output_dir, cfg.n_iter)),
                       inputs=[model_file])
    model = build_model(ckpt, model_file, dev)
    written = write_samples(model, output_dir, *grid, n=n_samples, seed=seed, boxes=boxes,
                            scale=scale, duration_ms=duration_ms, hold_last_ms=hold_last_ms,
                            temperature=temperature)
    # only once this call's files are complete: an interrupted call loses no earlier frames
    stale = remove_stale_frames(output_dir, cfg.n_iter)
    print(f"wrote {written[0]}, {written[1].name} .. {written[-3].name}, {written[-2].name} "
          f"and {written[-1].name}")
    if stale:
        names = " .. ".join(dict.fromkeys((stale[0].name, stale[-1].name)))
        print(f"removed {len(stale)} frame{'s' * (len(stale) > 1)} ({names}) left by an earlier "
              f"call with more steps")
    return written
