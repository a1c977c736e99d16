"""The training loop of bench/'s stability probes (draw_stability.py, classifier_stability.py):
steps counted across epochs, a row every few steps, a stop at the first non-finite loss."""
import json
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch


def probe_steps(epoch_batches: Callable[[int], Iterable], steps: int,
                every: int) -> Iterator[tuple[int, int, object, bool]]:
    """(step, epoch, batch, row) for steps 1 .. `steps`, through `epoch_batches(epoch)` for
    epoch = 0, 1, ...; `row` is true every `every` steps and at the last."""
    step, epoch = 0, 0
    while True:
        for batch in epoch_batches(epoch):
            step += 1
            yield step, epoch, batch, step % every == 0 or step == steps
            if step == steps:
                return
        epoch += 1


def finite(loss: torch.Tensor, step: int) -> bool:
    """Whether `loss` is finite; says so where it is not (the probe then stops)."""
    if not torch.isfinite(loss):
        print(f"step {step}: non-finite loss, stopped")
        return False
    return True


def save_rows(rows: list[dict], out: str | None) -> None:
    """The rows as JSON in `out`, where one is given."""
    if out:
        Path(out).write_text(json.dumps(rows, indent=1))
