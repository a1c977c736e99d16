"""Monitoring extensions: the task's numbers averaged over each training epoch, and evaluated
on the valid and test splits (draw/training/task.py says what the numbers are)."""
import torch
from tqdm.auto import tqdm

from draw.training.simple_extension import SimpleExtension


def log_entries(prefix: str, means: dict) -> dict:
    """A task's numbers as log keys: {"nll_bound": b, "kl_term": [k0, k1]} with prefix "valid"
    gives valid_nll_bound, valid_kl_term_0, valid_kl_term_1 (the classic names)."""
    row = {}
    for name, value in means.items():
        if isinstance(value, (list, tuple)):
            row.update({f"{prefix}_{name}_{t}": float(v) for t, v in enumerate(value)})
        else:
            row[f"{prefix}_{name}"] = float(value)
    return row


class TrainingDataMonitoring(SimpleExtension):
    """Average the task's numbers over each epoch's examples into `train_<name>` (for DRAW
    `train_nll_bound`, `train_kl_term_<t>`), and the norms over its batches into
    `train_total_gradient_norm` and `train_total_step_norm`. The sums stay on the device until
    the epoch ends: no host sync per batch."""
    # what checkpoints written before the task existed called the sums (a mid-epoch resume)
    OLD_NAMES = {"nll_bound_sum": "nll_bound", "kl_sum": "kl_term"}

    default_triggers = ("after_batch", "after_epoch")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sums: dict[str, torch.Tensor] = {}    # float64, on the model's device
        self.batches = 0

    def do(self, which_callback: str, *args) -> None:
        if which_callback == "after_batch":
            last = self.main_loop.last_batch
            numbers = {**last["sums"], "total_gradient_norm": last["total_gradient_norm"],
                       "total_step_norm": last["total_step_norm"]}
            for key, value in numbers.items():
                value = value.detach().double()
                self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.batches += 1
        elif which_callback == "after_epoch" and self.batches:
            sums = dict(self.sums)
            norms = {key: sums.pop(key).item() / self.batches
                     for key in ("total_gradient_norm", "total_step_norm")}
            examples = sums.pop("examples").item()
            means = {key: (value / examples).tolist() for key, value in sums.items()}
            self.main_loop.log[-1].update(log_entries("train", {**means, **norms}))
            self.sums, self.batches = {}, 0

    def state_dict(self) -> dict:
        return {"sums": {key: value.cpu() for key, value in self.sums.items()},
                "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        device = next(self.main_loop.model.parameters()).device
        sums = {self.OLD_NAMES.get(key, key): value.to(device)
                for key, value in state.get("sums", {}).items()}
        if "images" in state and sums:     # the old format kept the count apart
            sums["examples"] = torch.tensor(float(state["images"]), dtype=torch.float64,
                                            device=device)
        self.sums, self.batches = sums, state.get("batches", 0)


class DataStreamMonitoring(SimpleExtension):
    """Evaluate the task on a split: `<prefix>_<name>` for each of its numbers (for DRAW
    `<prefix>_nll_bound`, `<prefix>_kl_term_<t>`), and `<prefix>_examples`.

    `stream()` is one pass over the (sub)split, evaluated before training and every `every`
    epochs; `final()` (default `stream`) the whole split, after the last epoch. `seed` seeds the
    noise afresh each time: epochs differ by the model alone, and the training's random
    streams are untouched. `sizes` (batches per pass of each) gives the progress bar, shown
    where `progress` and stderr is a terminal, its ETA.
    """

    default_triggers = ("before_first_epoch", "after_epoch")

    def __init__(self, stream, prefix: str, device, seed: int = 0, every: int = 1, final=None,
                 sizes: tuple[int, int] | None = None, progress: bool = False, **kwargs):
        kwargs.setdefault("name", f"{prefix}_monitoring")
        super().__init__(**kwargs)
        self.stream, self.final, self.prefix = stream, final or stream, prefix
        self.device, self.seed, self.every = torch.device(device), seed, every
        self.sizes, self.progress = sizes, progress

    def do(self, which_callback: str, *args) -> None:
        loop = self.main_loop
        last = which_callback == "after_epoch" and loop.status["finish_requested"]
        if which_callback == "after_epoch" and not last and loop.status["epoch"] % self.every:
            return
        stream = self.final if last else self.stream
        total = None if self.sizes is None else self.sizes[1 if last else 0]
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        with tqdm(stream(), total=total, desc=f"evaluating {self.prefix}", unit="batch",
                  leave=False, disable=None if self.progress else True,
                  dynamic_ncols=True) as bar:       # None: only where stderr is a terminal
            means = loop.task.evaluate(_Counted(bar), generator)
        row = loop.log[-1]
        row.update(log_entries(self.prefix, means))
        row[f"{self.prefix}_examples"] = bar.examples


class _Counted:
    """Iterate over a progress bar's batches, counting their examples (first dimension)."""

    def __init__(self, bar):
        self.bar = bar
        bar.examples = 0

    def __iter__(self):
        for batch in self.bar:
            first = batch[0] if isinstance(batch, (tuple, list)) else batch
            self.bar.examples += first.shape[0]
            yield batch
