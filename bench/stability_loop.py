"""The training loop of bench/'s stability probes (draw_stability.py, classifier_stability.py):
steps counted across epochs, a row every few steps, a stop at the first non-finite loss."""
import json
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch


def steps_across_epochs(epoch_batches: Callable[[int], Iterable], steps: int,
                        every: int) -> Iterator[tuple[int, int, object, bool]]:
    """(step, epoch, batch, row) for steps 1 .. `steps` (none for steps < 1), through
    `epoch_batches(epoch)` for epoch = 0, 1, ...; `row` is true every `every` steps and at the
    last. An epoch without a batch is an error, not a loop that never ends."""
    step, epoch = 0, 0
    while step < steps:
        before = step
        for batch in epoch_batches(epoch):
            step += 1
            yield step, epoch, batch, step % every == 0 or step == steps
            if step == steps:
                return
        if step == before:
            raise ValueError(f"epoch {epoch} has no batch (a batch larger than the split?)")
        epoch += 1


def stopped_at_non_finite(loss: torch.Tensor, step: int) -> bool:
    """Whether `loss` is not finite, in which case the probe stops: it says so."""
    if torch.isfinite(loss):
        return False
    print(f"step {step}: non-finite loss, stopped")
    return True


def save_rows(rows: list[dict], out: str | None) -> None:
    """The rows as JSON in `out`, where one is given."""
    if out:
        Path(out).write_text(json.dumps(rows, indent=1))
