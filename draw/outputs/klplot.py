"""Plots of a training log: KL per step over epochs, and the nll curves.

The classic `plot-kl.py` drew the KL term of every DRAW step (eq. 11, before the sum over t)
against the epochs as a 3D surface: where in the drawing process the model spends its bits,
and how that changes as it learns. This module draws that surface and a heat map of the same
numbers with matplotlib (files through the Agg backend, no display needed), and builds the Bokeh
figures of the log (nll bounds, KL per step, gradient norms) that both the static HTML page of
`plot-kl.py` and the live page of `draw.outputs.live` show.

Log rows are the dicts of draw/checkpoint.py: "epoch", "iteration", "train_nll_bound",
"valid_nll_bound", "test_nll_bound", "{split}_kl_term_{t}", "train_total_gradient_norm",
"train_total_step_norm", ... A row may lack any of them (a key that was not monitored then).
"""
import math
import os
import re
from pathlib import Path

import numpy as np
from bokeh.embed import file_html
from bokeh.layouts import gridplot
from bokeh.models import ColumnDataSource, HoverTool, LinearColorMapper
from bokeh.palettes import Category10, Viridis256
from bokeh.plotting import figure
from bokeh.resources import INLINE
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from draw.atomic import atomic_path, atomic_write_bytes
from draw.checkpoint import load_log
from draw.errors import DrawError
from draw.outputs.display import pyplot_or_warn
from draw.outputs.plotting import MAX_PIXELS, check_output_files, check_picture_size

NLL_KEYS = ("train_nll_bound", "valid_nll_bound", "test_nll_bound")
NORM_KEYS = ("train_total_gradient_norm", "train_total_step_norm")
SPLITS = ("train", "valid", "test")
# what train-classifier.py logs instead of nll bounds and KL terms (draw/training/classify.py)
CLASSIFIER_KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("error", "cross_entropy"))
FIGSIZE = (8, 6)            # inches; times --dpi gives the PNG's pixels
MAX_DPI = math.isqrt(MAX_PIXELS // (FIGSIZE[0] * FIGSIZE[1]))


class LogPlotError(DrawError):
    """A log that holds nothing to plot."""


def _number(value) -> float:
    """A log value as a float; NaN where missing or not a number (a gap in the curve)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _epochs(rows: list[dict]) -> tuple[list[float], str]:
    """The x axis: the rows' epochs where they rise strictly (one row per epoch), else their
    iterations (rows written every N batches), else the row number."""
    for key in ("epoch", "iteration"):
        x = [_number(r.get(key)) for r in rows]
        if x and all(b > a for a, b in zip(x, x[1:])) and not any(math.isnan(v) for v in x):
            return x, key
    return [float(k) for k in range(1, len(rows) + 1)], "log row"


def splits_with_kl(rows: list[dict]) -> list[str]:
    """The splits, in SPLITS order, with per-step KL terms in at least one row. A run stopped
    in its first epoch has only those of the evaluation before training (valid, test)."""
    return [s for s in SPLITS if any(k.startswith(f"{s}_kl_term_") for r in rows for k in r)]


def kl_terms(rows: list[dict], split: str = "train") -> tuple[np.ndarray, np.ndarray, str]:
    """The per-step KL ("{split}_kl_term_{t}") of every log row (oldest first) that has all of
    them: x (R,), the epoch (or iteration) of each of the R rows used; kl (R, T), nats, of
    step t = 0..T-1; and x_label, what x counts: "epoch", "iteration" or "log row"."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pattern = re.compile(rf"{split}_kl_term_(\d+)$")
    steps = {int(m.group(1)) for r in rows for k in r if (m := pattern.match(k))}
    T = max(steps) + 1 if steps else 0
    # a row must hold every step 0..T-1, which no row does where some step is in none: a
    # log naming step 10^12 alone is refused here, before T keys are spelled out
    keys = [f"{split}_kl_term_{t}" for t in range(T)] if len(steps) == T else []
    used = [r for r in rows if keys and all(k in r for k in keys)]
    if not used:
        raise LogPlotError(f"the log has no rows with {split}_kl_term_0.. values to plot")
    x, x_label = _epochs(used)
    kl = np.array([[_number(r[k]) for k in keys] for r in used], dtype=np.float64)
    return np.array(x), kl, x_label


def plot_kl_surface(fig: Figure, x: np.ndarray, kl: np.ndarray, x_label: str = "epoch") -> None:
    """The classic plot: KL of each step over epochs as a 3D surface, drawn into `fig`.

    With a single row (or step) there is no surface to span, so that one curve is drawn.
    """
    ax = fig.add_subplot(projection="3d")
    S, X = np.meshgrid(np.arange(kl.shape[1]), x)                             # (R, T) each
    if min(kl.shape) == 1:
        ax.plot(S.ravel(), X.ravel(), kl.ravel(), color="tab:blue")
    else:
        ax.plot_surface(S, X, kl, cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel("DRAW step t")
    ax.set_ylabel(x_label)
    ax.set_zlabel("KL (nats)")
    ax.set_title("KL divergence per step")


def plot_kl_heatmap(fig: Figure, x: np.ndarray, kl: np.ndarray, x_label: str = "epoch") -> None:
    """KL of each step (columns) for each epoch (rows) as a heat map, drawn into `fig`."""
    ax = fig.add_subplot()
    # rows are evenly spaced on the picture even where the epochs are not: label them instead
    image = ax.imshow(kl, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    ticks = np.unique(np.linspace(0, len(x) - 1, min(len(x), 8)).round().astype(int))
    ax.set_yticks(ticks, [f"{x[i]:g}" for i in ticks])
    ax.set_xlabel("DRAW step t")
    ax.set_ylabel(x_label)
    ax.set_title("KL divergence per step (nats)")
    fig.colorbar(image, ax=ax)


def save_figure(draw, path: str | os.PathLike, *args, figsize=FIGSIZE, dpi: int = 100) -> None:
    """Draw a figure headlessly (matplotlib's Agg, no pyplot) with draw(fig, *args), e.g.
    `plot_kl_surface`, and save it as a PNG, atomically; a missing folder is created."""
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    draw(fig, *args)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def log_columns(rows: list[dict], split: str = "train") -> tuple[dict[str, dict], str]:
    """The log as the column data of the Bokeh sources that `log_figures` plots, and what "x"
    counts (see `kl_terms`). Empty columns where the log has nothing yet, otherwise:
        "curves": {"x": epochs, each of NLL_KEYS and NORM_KEYS: values (NaN where missing)}
        "kl_steps": {"step": [0..T-1], "kl": KL per step of the latest row}
        "kl_heat": {"image": [(R, T) array], "x", "y", "dw", "dh": placement in step/epoch units}
    """
    monitored = [r for r in rows if any(k in r for k in NLL_KEYS + NORM_KEYS)]
    x, x_label = _epochs(monitored)
    curves = {"x": x}
    for key in NLL_KEYS + NORM_KEYS:
        curves[key] = [_number(r.get(key)) for r in monitored]
    try:
        kl_x, kl, _ = kl_terms(rows, split)
    except LogPlotError:
        kl_x, kl = np.zeros(0), np.zeros((0, 0))
    R, T = kl.shape
    kl_steps = {"step": list(range(T)), "kl": kl[-1].tolist() if R else []}
    if R:
        # one image row per log row, centred on its epoch where the epochs are evenly spaced
        even = R == 1 or np.allclose(np.diff(kl_x), kl_x[1] - kl_x[0])
        pitch = (kl_x[1] - kl_x[0]) if even and R > 1 else 1.0
        y0 = kl_x[0] if even else 1.0
        kl_heat = {"image": [kl], "x": [-0.5], "y": [y0 - pitch / 2], "dw": [T], "dh": [R * pitch]}
    else:
        kl_heat = {"image": [], "x": [], "y": [], "dw": [], "dh": []}
    return {"curves": curves, "kl_steps": kl_steps, "kl_heat": kl_heat}, x_label


def log_figures(sources: dict[str, ColumnDataSource], x_label: str = "epoch") -> list:
    """Bokeh figures of the log: nll bounds, gradient norms, KL per step (latest), KL heat map.
    They are bound to `sources` (keys as in `log_columns`), so that changing a source's data
    redraws them (the live page relies on it)."""
    colors = Category10[10]
    nll = figure(title="nll bound (nats)", x_axis_label=x_label, y_axis_label="nats",
                 width=520, height=320, name="nll_figure")
    for key, color in zip(NLL_KEYS, colors):
        nll.line("x", key, source=sources["curves"], color=color, line_width=2,
                 legend_label=key.replace("_nll_bound", ""))
        nll.scatter("x", key, source=sources["curves"], color=color, size=5)
    nll.add_tools(HoverTool(tooltips=[(x_label, "@x")] + [(k, f"@{k}") for k in NLL_KEYS]))
    nll.legend.location = "top_right"

    norms = figure(title="training gradient and step norms", x_axis_label=x_label,
                   width=520, height=320, name="norms_figure")
    for key, color in zip(NORM_KEYS, colors[3:]):
        norms.line("x", key, source=sources["curves"], color=color, line_width=2,
                   legend_label=key.replace("train_total_", "").replace("_", " "))
    norms.add_tools(HoverTool(tooltips=[(x_label, "@x")] + [(k, f"@{k}") for k in NORM_KEYS]))

    steps = figure(title="KL per step, latest epoch (nats)", x_axis_label="DRAW step t",
                   width=520, height=320, name="kl_steps_figure")
    steps.vbar("step", top="kl", width=0.8, source=sources["kl_steps"], color=colors[5])
    steps.add_tools(HoverTool(tooltips=[("step", "@step"), ("KL", "@kl")]))

    heat = figure(title="KL per step over training (nats)", x_axis_label="DRAW step t",
                  y_axis_label=x_label, width=520, height=320, name="kl_heat_figure")
    heat.image("image", x="x", y="y", dw="dw", dh="dh", source=sources["kl_heat"],
               color_mapper=LinearColorMapper(palette=Viridis256))
    heat.add_tools(HoverTool(tooltips=[("KL", "@image")]))
    return [nll, norms, steps, heat]


def save_html(rows: list[dict], path: str | os.PathLike, split: str = "train",
              title: str = "DRAW training log") -> None:
    """A self-contained interactive HTML page of the log (Bokeh, scripts inlined so that it
    opens without a network), written atomically; a missing folder is created."""
    columns, x_label = log_columns(rows, split)
    if not columns["curves"]["x"] and not columns["kl_steps"]["step"]:
        raise LogPlotError("the log has no rows with nll bounds, norms or KL terms to plot")
    sources = {name: ColumnDataSource(data, name=name) for name, data in columns.items()}
    layout = gridplot(log_figures(sources, x_label), ncols=2)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, file_html(layout, INLINE, title).encode("utf-8"))


def output_stem(log_file: str) -> str:
    """runs/name_log.pkl -> runs/name: the prefix of the default output files."""
    for suffix in ("_log.pkl", ".pkl"):
        if log_file.endswith(suffix):
            return log_file[: -len(suffix)]
    return log_file


def choose_split(rows: list[dict], split: str | None) -> str:
    """`split` if the log has its KL terms, else the first split that has them when none was
    asked for; LogPlotError naming the splits there are otherwise."""
    have = splits_with_kl(rows)
    if split is None and have:
        return have[0]
    if split in have:
        return split
    if not have:
        if any(k in CLASSIFIER_KEYS for r in rows for k in r):
            raise LogPlotError("the log is a classifier's (train-classifier.py: error rates and "
                               "cross-entropy, no KL terms); plot-kl.py plots the per-step KL "
                               "terms (*_kl_term_t) of a DRAW log, the <name>_log.pkl of "
                               "train-draw.py")
        raise LogPlotError("the log has no rows with per-step KL values (*_kl_term_0..) to plot "
                           "yet: no epoch has been evaluated")
    options = " or ".join(f"--split {s}" for s in have)
    raise LogPlotError(f"the log has no rows with {split}_kl_term_0.. values; it has the KL "
                       f"terms of {', '.join(have)}: use {options}")


def main(log_file: str, split: str | None = None, surface: str | None = None,
         heatmap: str | None = None, html: str | None = None, dpi: int = 100,
         show: bool = False) -> list[str]:
    """plot-kl.py: the KL surface and heat map (PNG) and the HTML page of a log file, beside it
    unless named. Everything is checked before the first file is written: the outputs (none
    may be the log, a folder or another output) before the log is read. Returns the files."""
    check_picture_size(round(FIGSIZE[0] * dpi), round(FIGSIZE[1] * dpi),
                       f"a {FIGSIZE[0]}x{FIGSIZE[1]} inch figure at --dpi {dpi}")
    stem = output_stem(log_file)
    written = [surface or f"{stem}_kl.png", heatmap or f"{stem}_kl_heatmap.png",
               html or f"{stem}_log.html"]
    check_output_files(zip(("--surface", "--heatmap", "--html"), written), inputs=[log_file])
    rows = load_log(log_file)
    split = choose_split(rows, split)
    x, kl, x_label = kl_terms(rows, split)
    save_figure(plot_kl_surface, written[0], x, kl, x_label, dpi=dpi)
    save_figure(plot_kl_heatmap, written[1], x, kl, x_label, dpi=dpi)
    save_html(rows, written[2], split)
    print(f"{kl.shape[0]} rows x {kl.shape[1]} steps of {split} KL; wrote {', '.join(written)}")
    plt = pyplot_or_warn() if show else None
    if plt is not None:
        plot_kl_surface(plt.figure("KL surface"), x, kl, x_label)
        plot_kl_heatmap(plt.figure("KL heat map"), x, kl, x_label)
        plt.show()
    return written
