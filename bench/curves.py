"""Learning curves of several runs side by side: the valid bound against epochs and against
training time, as a table (Markdown) and a plot (PNG). Used for the recipe comparison of issue 14
(doc/recipes.md).

    python bench/curves.py "lr 3e-4=runs/a/a_log.pkl" "lr 1e-3=runs/b/b_log.pkl" \
        --images-per-s 150 --out doc/recipes.png

Each argument is LABEL=LOG, a `<name>_log.pkl` (or a run directory holding one). Time is the
run's own measured training time (`time_train_this_epoch`, which other jobs on the machine
inflate), or with `--images-per-s R` the images trained divided by R: the same clock for runs
made under different loads, R measured idle with `python bench/bench.py --niters 64`.
"""
from pathlib import Path

from matplotlib.figure import Figure    # no pyplot: a file, never a window

from draw.checkpoint import load_checkpoint, load_log
from draw.cli import ArgumentParser, run
from draw.errors import DrawError


def curve(log_path: Path, images_per_s: float | None) -> tuple[list, list, list, int]:
    """Epochs, hours and valid bounds of the rows that have one, and the batch size."""
    if log_path.is_dir():
        found = sorted(log_path.glob("*_log.pkl"))
        if len(found) != 1:
            raise DrawError(f"{log_path}: expected one *_log.pkl file, found {len(found)}")
        log_path = found[0]
    rows = load_log(log_path)
    batch = load_checkpoint(str(log_path)[:-len("_log.pkl")] + "_model.pkl")["run"]["batch_size"]
    epochs, hours, bounds, seconds = [], [], [], 0.0
    for row in rows:
        seconds += row.get("time_train_this_epoch", 0.0)
        if "valid_nll_bound" in row:
            epochs.append(row["epoch"])
            trained = row["iteration"] * batch
            hours.append((trained / images_per_s if images_per_s else seconds) / 3600)
            bounds.append(row["valid_nll_bound"])
    return epochs, hours, bounds, batch


def main(runs: list[str], images_per_s: float | None, out: str) -> None:
    curves = {}
    for spec in runs:
        label, sep, path = spec.partition("=")
        if not sep:
            raise DrawError(f"expected LABEL=LOG, got {spec!r}")
        curves[label] = curve(Path(path), images_per_s)
    last = max(len(c[0]) for c in curves.values())
    print("| epoch | " + " | ".join(curves) + " |")
    print("| ---: |" + " ---: |" * len(curves))
    for i in range(last):
        cells = [f"{c[2][i]:.2f}" if i < len(c[2]) else "" for c in curves.values()]
        epoch = next(c[0][i] for c in curves.values() if i < len(c[0]))
        print(f"| {epoch} | " + " | ".join(cells) + " |")
    fig = Figure(figsize=(11, 4))
    by_epoch, by_time = fig.subplots(1, 2, sharey=True)
    for label, (epochs, hours, bounds, _) in curves.items():
        by_epoch.plot(epochs[1:], bounds[1:], marker="o", label=label)  # epoch 0: untrained
        by_time.plot(hours[1:], bounds[1:], marker="o", label=label)
    by_epoch.set(xlabel="epoch", ylabel="valid bound (nats)")
    clock = (f"hours at {images_per_s:g} images/s" if images_per_s
             else "hours of training (measured)")
    by_time.set(xlabel=clock)
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
    by_epoch.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=LOG")
    parser.add_argument("--images-per-s", type=float, default=None)
    parser.add_argument("--out", default="curves.png")
    run(main, parser.parse_args())
