"""Where a learning curve is going: two fits of a run's bound, and when each reaches a target.

For issue 21, item 5: "the curve and the projection that say so".

    python bench/projection.py doc/curves/t64-hold-1.3e-4.csv --age 32 --target 80.97 \
        --anneal 0.65 --epoch-minutes 5.7 --out doc/projection-attention.png
    python bench/projection.py RUNS/noattn2-20261206-031725 --column valid --from 14

CURVE is a run directory, its `<name>_log.pkl` or `<name>_log.csv`, or a CSV file with the
log's columns (`epoch`, `train_nll_bound`, ...; lines starting with # are comments), such as
the curves of doc/curves/ transcribed from runs whose directories are lost. Only the rows from
--from on are fitted: a run held at one rate, after the transient of its last change of rate.

Two shapes, fitted by least squares (bounds in nats, t the epoch plus --age, t0 the first
point's t):

    log-linear   y = a + b ln t                 the same gain each time the epochs grow e-fold;
                                                no floor, so the optimistic one
    saturating   y = a + c exp(-(t - t0) / k)   a floor at a, which it never crosses

A held rate leaves the bound above where an anneal at the end takes it (doc/recipes.md: 0.65
nat for the attention model held at 1.3e-4), so with --anneal G the curve must reach
target + G. Whether both shapes fit the points alike is in their rms residuals: when they do,
the points cannot choose between them, and the truth is taken to lie between the two answers.
"""
import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure    # no pyplot: a file, never a window
from scipy.optimize import curve_fit

from draw.checkpoint import CheckpointError, load_log
from draw.cli import ArgumentParser, run
from draw.errors import DrawError

COLUMNS = ("train", "valid", "test")


def read_curve(path: Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and `{column}_nll_bound` of the rows that have one, from a run directory, a log
    (.pkl or .csv) or a CSV of the log's columns."""
    key = f"{column}_nll_bound"
    if path.is_dir():
        found = sorted(path.glob("*_log.pkl"))
        if len(found) != 1:
            raise DrawError(f"{path}: expected one *_log.pkl file, found {len(found)}")
        path = found[0]
    if path.suffix == ".pkl":
        try:
            rows = load_log(path)
        except CheckpointError as e:
            raise DrawError(str(e)) from e
    else:
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
        except UnicodeDecodeError:
            raise DrawError(f"{path}: not a text file (expected a CSV of the log's columns)"
                            ) from None
    rows = [r for r in rows if r.get(key) not in ("", None)]     # the log's row 0 has none
    if not rows or "epoch" not in rows[0]:
        raise DrawError(f"{path}: no columns 'epoch' and '{key}'")
    try:
        points = [(float(r["epoch"]), float(r[key])) for r in rows]
    except ValueError as e:
        raise DrawError(f"{path}: {e}") from e
    epochs, bounds = np.array(sorted(points)).reshape(-1, 2).T
    if not np.isfinite(epochs).all() or not np.isfinite(bounds).all():
        raise DrawError(f"{path}: an epoch or a {key} that is not a finite number")
    if len(np.unique(epochs)) < len(epochs):
        raise DrawError(f"{path}: an epoch appears twice")
    return epochs, bounds


@dataclass(frozen=True)
class Fit:
    """One shape fitted to the points: its name, parameters ((a, b) log-linear, (a, c, k, t0)
    saturating) and rms residual."""
    name: str
    params: tuple[float, ...]
    rms: float = 0.0

    def __call__(self, t):
        t = np.asarray(t, dtype=float)
        if self.name == "log-linear":
            a, b = self.params
            return a + b * np.log(t)
        a, c, k, t0 = self.params
        return a + c * np.exp(-(t - t0) / k)

    def formula(self) -> str:
        if self.name == "log-linear":
            a, b = self.params
            return f"y = {a:.2f} {b:+.3f} ln t"
        a, c, k, t0 = self.params
        return f"y = {a:.2f} {c:+.2f} exp(-(t - {t0:g}) / {k:.1f})"

    def reaches(self, level: float) -> float:
        """The epoch t at which the fit falls to `level`; inf if it never does (a floor at or
        above it, a curve that rises) or only past e^700 epochs."""
        if self.name == "log-linear":
            a, b = self.params
            exponent = (level - a) / b if b < 0 else math.inf
            return math.exp(exponent) if exponent < 700 else math.inf
        a, c, k, t0 = self.params                      # k > 0: fit_saturating bounds it
        if c <= 0 or level <= a:
            return math.inf
        return t0 - k * math.log((level - a) / c)


def _with_rms(fit: Fit, t: np.ndarray, y: np.ndarray) -> Fit:
    return Fit(fit.name, fit.params, float(np.sqrt(np.mean((y - fit(t)) ** 2))))


def fit_log_linear(t: np.ndarray, y: np.ndarray) -> Fit:
    b, a = np.polyfit(np.log(t), y, 1)
    return _with_rms(Fit("log-linear", (float(a), float(b))), t, y)


def fit_saturating(t: np.ndarray, y: np.ndarray) -> Fit:
    """a + c exp(-(t - t0)/k) with k > 0, least squares started from a floor a nat below the
    lowest point, through the first point, with the points' span as the time constant."""
    t0, span = float(t[0]), float(t[-1] - t[0])
    floor = float(y.min()) - 1.0
    try:
        (a, c, k), _ = curve_fit(lambda t, a, c, k: a + c * np.exp(-(t - t0) / k), t, y,
                                 p0=(floor, float(y[0]) - floor, span),
                                 bounds=([-np.inf, -np.inf, 1e-6 * span], np.inf),
                                 max_nfev=20000)
    except RuntimeError as e:            # least squares did not converge
        raise DrawError(f"the saturating fit failed: {e}") from e
    return _with_rms(Fit("saturating", (float(a), float(c), float(k), t0)), t, y)


def project(epochs: np.ndarray, bounds: np.ndarray, first: float, age: float
            ) -> tuple[np.ndarray, np.ndarray, list[Fit]]:
    """The points from epoch `first` on, as (t = epoch + age, bound), and both fits."""
    keep = epochs >= first
    t, y = epochs[keep] + age, bounds[keep]
    if len(t) < 4:
        raise DrawError(f"{len(t)} points from epoch {first:g} on: a fit needs at least 4")
    if t[0] <= 0:
        raise DrawError(f"epoch + age must be positive for ln t, got {t[0]:g} (use --age)")
    return t, y, [fit_log_linear(t, y), fit_saturating(t, y)]


def _epochs(t: float) -> str:
    return f"{t:.0f}" if t < 1e7 else f"{t:.1e}"


def main(curve: str, column: str, first: float, age: float, target: float | None,
         anneal: float, epoch_minutes: float | None, out: str | None) -> None:
    if out is not None and Path(out).suffix.lower() != ".png":
        raise DrawError(f"--out {out}: the picture is a PNG file (name it *.png)")
    epochs, bounds = read_curve(Path(curve), column)
    t, y, fits = project(epochs, bounds, first, age)
    print(f"{curve}: {column} bound, {len(t)} points, t = epoch + {age:g} from {t[0]:g} to "
          f"{t[-1]:g}; last {y[-1]:.2f}")
    level = None if target is None else target + anneal
    for fit in fits:
        line = f"  {fit.name:<11} {fit.formula():<40} rms {fit.rms:.3f}"
        if level is not None:
            when = fit.reaches(level)
            if math.isinf(when):
                line += f": never reaches {level:.2f}"
            elif when <= t[-1]:
                line += f": at {level:.2f} by t = {_epochs(when)}, within the points"
            else:
                line += (f": reaches {level:.2f} at t = {_epochs(when)}, "
                         f"{_epochs(when - t[-1])} epochs on")
                if epoch_minutes:
                    line += f" ({_epochs((when - t[-1]) * epoch_minutes / 60)} h)"
        print(line)
    if out:
        plot(t, y, fits, column, level, anneal, out)


def plot(t, y, fits: list[Fit], column: str, level: float | None, anneal: float,
         out: str) -> None:
    """The points and both fits on a log time axis, drawn on to where a fit reaches `level`
    (at most 100 times the last point's t)."""
    ahead = [f.reaches(level) for f in fits] if level is not None else []
    end = min(t[-1] * 100, max([t[-1] * 3] + [w * 1.1 for w in ahead if math.isfinite(w)]))
    grid = np.geomspace(t[0], end, 400)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(t, y, "o", markersize=3, label=f"{column} bound")
    for fit in fits:
        ax.plot(grid, fit(grid), label=f"{fit.name}: {fit.formula()}")
    if level is not None:
        ax.axhline(level, color="grey", linestyle="--",
                   label=f"target + anneal ({level - anneal:.2f} + {anneal:g})")
    ax.set(xscale="log", xlabel="t (epochs)", ylabel="bound (nats)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


def finite(text: str) -> float:
    """An argparse type: a finite number."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive(text: str) -> float:
    """An argparse type: a finite number above 0."""
    value = finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curve", help="run directory, log (.pkl, .csv) or CSV of its columns")
    parser.add_argument("--column", choices=COLUMNS, default="train",
                        help="which bound to fit (default: train, the epoch's mean)")
    parser.add_argument("--from", dest="first", type=finite, default=-math.inf,
                        help="fit the rows from this epoch on (default: all)")
    parser.add_argument("--age", type=finite, default=0.0,
                        help="epochs the model trained before the curve's epoch 0 (default 0)")
    parser.add_argument("--target", type=finite, default=None, help="the bound to reach")
    parser.add_argument("--anneal", type=finite, default=0.0,
                        help="what an anneal at the end takes off the held curve (default 0)")
    parser.add_argument("--epoch-minutes", type=positive, default=None,
                        help="minutes an epoch takes, to turn epochs into hours")
    parser.add_argument("--out", default=None, help="draw the points and fits to this PNG")
    run(main, parser.parse_args())
