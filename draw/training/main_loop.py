"""The training loop: fetch a batch, take a step, fire events; extensions do everything else.

Shaped after Blocks' MainLoop: the loop knows nothing about monitoring, checkpoints, plots or
DRAW. A task (draw/training/task.py) turns a batch into the loss and the numbers to monitor; the
loop takes the clipped Adam step, under autocast for precision="bf16-mixed" (draw/precision.py),
and fires before_training, before_epoch, after_batch, after_epoch, after_training and on_error
to every extension (draw/training/extensions.py). Extensions talk through `log`: one row of
plain numbers per finished epoch, plus row 0 for the state before training.

    loop = MainLoop(DrawTask(model), adam(model.parameters(), lr=1e-3))
    loop.step(x)          # one step outside a run (bench/); loop.last_batch holds its numbers

Under torchrun every rank runs the loop on the same global batches and the task keeps its
slice; one all-reduce per step gives every rank the global sums and whether any rank saw a
Ctrl-C, so all log the same numbers and stop after the same batch.

The first Ctrl-C finishes the batch, runs after_training (Checkpoint saves mid-epoch) and
returns; a second raises KeyboardInterrupt at once (every file is written atomically). A run
resumed mid-epoch replays the epoch's data order, skipping the batches already trained on.
"""
import signal
import threading
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import clip_grad_norm_

from draw.errors import DrawError
from draw.precision import MATMUL_DEFAULT, autocast, check_matmul_precision, float32_matmul


class TrainingError(DrawError):
    """Training cannot go on: a non-finite loss or gradient."""


def adam(parameters, lr: float) -> torch.optim.Adam:
    """The runs' optimizer: Adam with PyTorch's fused kernel, one pass over all parameters."""
    return torch.optim.Adam(parameters, lr=lr, fused=True)


def adam_with_heads(model: nn.Module, heads: Iterable[nn.Parameter], scale: float,
                    lr: float) -> torch.optim.Adam:
    """`adam` with two groups: the parameters of `heads` at `scale` times the rate `lr`, the
    rest of the model at `lr` ("lr_scale", which LearningRateSchedule keeps)."""
    heads = list(heads)
    rest = [p for p in model.parameters() if all(p is not q for q in heads)]
    return adam([{"params": rest, "lr_scale": 1.0}, {"params": heads, "lr_scale": scale}], lr=lr)


def load_adam_state(optimizer: torch.optim.Adam, state: dict) -> None:
    """Restore a checkpoint's optimizer state into an `adam` optimizer, fused even where the
    checkpoint predates fusing (it stores fused=None; the moments are the same)."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["fused"] = True


class MainLoop:
    """Train `task.model` with `optimizer` on `epoch_batches` until an extension requests a stop.

    Parameters
    ----------
    task : a task (draw/training/task.py)
    optimizer : torch.optim.Optimizer
    epoch_batches : callable, optional
        Called once per epoch by `run`: that epoch's global batches on the model's device,
        drawn from `generator` alone, whose state at each epoch's start the loop keeps.
    generator : torch.Generator, optional
    extensions : iterable of SimpleExtension
        Run in this order at every event, so monitors go before the checkpoint that saves them.
    grad_clip : float
        The total gradient norm each step is clipped to (the classic StepClipping(10)).
    precision : str
        "32" or "bf16-mixed": the autocast of the training forward pass.
    matmul_precision : str
        torch.set_float32_matmul_precision's name for the training step's forward and backward
        ("highest", "high", "medium"; draw/precision.py), restored after each step.
    """

    def __init__(self, task, optimizer: torch.optim.Optimizer,
                 epoch_batches: Callable[[], Iterable] | None = None,
                 generator: torch.Generator | None = None, extensions: Iterable = (),
                 grad_clip: float = 10.0, precision: str = "32",
                 matmul_precision: str = MATMUL_DEFAULT):
        self.task = task
        self.model = task.model
        self.dist = task.dist
        self.optimizer = optimizer
        self.epoch_batches = epoch_batches
        self.generator = generator if generator is not None else torch.Generator()
        self.extensions = list(extensions)
        self.grad_clip = grad_clip
        self._sigint = False       # this rank has seen a Ctrl-C (see _on_sigint)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.precision = precision
        autocast(precision, self.params[0].device)      # a bad name: ValueError now, not later
        check_matmul_precision(matmul_precision)       # the same for this one
        self.matmul_precision = matmul_precision
        # the parameters before each update, for the step norm, kept between steps: fresh
        # vectors every step cost page faults
        self._before: list[torch.Tensor] | None = None
        self.log: list[dict] = []
        self.status = {"epoch": 0, "iteration": 0, "batch": 0, "epoch_rng": None,
                       "finish_requested": False, "interrupted": False}
        self.last_batch: dict = {}       # the latest step's numbers (see step)
        for extension in self.extensions:
            extension.main_loop = self

    @property
    def fresh(self) -> bool:
        """True until the first batch of a run that did not start from a checkpoint."""
        return self.status["iteration"] == 0

    def run(self) -> None:
        """Train until a stop request or an interrupt; on any exception fire on_error, re-raise."""
        on_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if on_main_thread else None
        try:
            if not self.log:
                self.log.append({"epoch": 0, "iteration": 0})
            self._fire("before_training")
            while not (self.status["finish_requested"] or self.status["interrupted"]):
                if not self._run_epoch():
                    break
                self.status.update(epoch=self.status["epoch"] + 1, batch=0)
                self.log.append({"epoch": self.status["epoch"],
                                 "iteration": self.status["iteration"]})
                self._fire("after_epoch")
            self._fire("after_training")
        except BaseException as e:
            self._fire("on_error", e)
            raise
        finally:
            if on_main_thread:
                signal.signal(signal.SIGINT, previous)

    def _run_epoch(self) -> bool:
        """Train one epoch (or its rest, after a mid-epoch resume); False if interrupted."""
        skip = self.status["batch"]
        if skip == 0:
            self.status["epoch_rng"] = self.generator.get_state()
        else:
            # resuming mid-epoch: draw the epoch's order again from its start
            self.generator.set_state(self.status["epoch_rng"])
        self._fire("before_epoch")
        batches = iter(self.epoch_batches())
        for _ in range(skip):
            next(batches)       # trained on before the interrupt: drawn, not trained on again
        for x in batches:
            self.step(x)
            self.status["iteration"] += 1
            self.status["batch"] += 1
            self._fire("after_batch")
            if self.status["interrupted"] or self.status["finish_requested"]:
                return False
        return True

    def step(self, batch) -> None:
        """One clipped Adam step on the task's loss of the global `batch`; fills `last_batch`
        with tensors: "loss" (global mean), "sums" (global), "total_gradient_norm" and
        "total_step_norm"."""
        self.optimizer.zero_grad(set_to_none=True)
        with float32_matmul(self.matmul_precision):
            # the forward pass alone: evaluation, outside `step`, stays float32 (precision.py)
            with autocast(self.precision, self.params[0].device):
                loss, sums = self.task.loss(batch)
            loss.backward()       # outside autocast, as torch.autocast's documentation asks
        grad_norm = clip_grad_norm_(self.params, self.grad_clip)    # the same on every rank
        # one vector [global mean loss, the sums flattened, any rank's Ctrl-C]: one all-reduce
        names = list(sums)
        parts = [loss.detach().double().reshape(1) / self.dist.world_size,
                 *(sums[name].detach().double().reshape(-1) for name in names),
                 loss.new_tensor([float(self._sigint)], dtype=torch.float64)]
        total = self.dist.all_reduce_sum(torch.cat(parts))
        if self.dist.enabled:
            self.status["interrupted"] = bool(total[-1] > 0)
        pieces = total[:-1].split([p.numel() for p in parts[:-1]])
        global_loss = pieces[0][0]
        # before the update, so a non-finite step never reaches the parameters or a checkpoint;
        # the step's one host sync, with the same verdict on every rank
        if not torch.isfinite(global_loss + grad_norm):
            raise TrainingError(
                f"non-finite loss ({global_loss.item():.4g}) or gradient norm "
                f"({grad_norm.item():.4g}) at epoch {self.status['epoch'] + 1}, batch "
                f"{self.status['batch'] + 1}; stopped before the update, the last saved epoch is "
                f"intact (try a lower --lr)")
        step_norm = self._update_and_step_norm()
        self.last_batch = {
            "loss": global_loss,
            "sums": {name: piece.view(sums[name].shape)
                     for name, piece in zip(names, pieces[1:])},
            "total_gradient_norm": grad_norm.detach(), "total_step_norm": step_norm}

    @torch.no_grad()
    def _update_and_step_norm(self) -> torch.Tensor:
        """optimizer.step(); returns the norm of the change of all parameters it made."""
        if self._before is None:
            self._before = [p.detach().clone() for p in self.params]
        else:
            torch._foreach_copy_(self._before, self.params)
        self.optimizer.step()
        torch._foreach_sub_(self._before, self.params)        # before - after: -step
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self._before)))

    def _fire(self, event: str, *args) -> None:
        for extension in self.extensions:
            getattr(extension, event)(*args)

    def _on_sigint(self, signum, frame) -> None:
        # restore the default handler first, so that a second Ctrl-C stops at once
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self._sigint = True
        if not self.dist.enabled:
            self.status["interrupted"] = True
        # else the ranks, which see the signal at different moments, agree in the next step
        if self.dist.is_main:
            print("\nCtrl-C: finishing this batch, saving, then stopping "
                  "(press Ctrl-C again to stop at once)", flush=True)

    def state_dict(self) -> dict:
        """Plain data to resume from: counters, the epoch's data order, extension states."""
        return {"epoch": self.status["epoch"], "iteration": self.status["iteration"],
                "batch": self.status["batch"], "epoch_rng": self.status["epoch_rng"],
                "log": [dict(row) for row in self.log],
                "extensions": {e.name: e.state_dict() for e in self.extensions}}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` output; the caller loads the model and the optimizer."""
        self.status.update(epoch=state["epoch"], iteration=state["iteration"],
                           batch=state["batch"], epoch_rng=state["epoch_rng"])
        self.log = [dict(row) for row in state["log"]]
        for extension in self.extensions:
            extension.load_state_dict(state["extensions"].get(extension.name, {}))
