"""The training loop: fetch a batch, take a step, fire events; extensions do everything else.

Shaped after Blocks' MainLoop, which trained the classic model: the loop knows nothing about
monitoring, checkpoints or plots. It fires the events before_training, before_epoch,
after_batch, after_epoch, after_training and on_error, and every extension (draw/training/extensions.py)
decides from its triggers whether to act. Extensions talk through the log: `log` holds one row
(a dict of plain numbers) per finished epoch, plus row 0 for the state before training.

Data parallelism
----------------
Under torchrun (draw/training/distributed.py) every rank runs this loop on the same global batches: each
step draws the noise of the whole batch (the same draws on every rank, which share the seed),
keeps its slice of both, and scales its loss so that DDP's average of the gradients is the
gradient of the global mean. One all-reduce per step then gives every rank the global sums for
monitoring and whether any rank has seen a Ctrl-C, so all ranks log the same numbers and stop
after the same batch.

Interruptions
-------------
The first Ctrl-C finishes the current batch (under torchrun: the batch after which the ranks
agree to stop), then after_training runs (the Checkpoint extension saves the state mid-epoch)
and `run` returns. A second Ctrl-C raises KeyboardInterrupt at once;
since every file is written atomically, the files on disk stay the last complete ones. A run
resumed from a mid-epoch checkpoint replays the epoch's data order from its start, skipping the
batches already trained on, so it goes on exactly as if it had never stopped.
"""
import signal
import threading
from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.nn.utils import clip_grad_norm_, parameters_to_vector

from draw.training.distributed import Distributed, wrap_model
from draw.errors import DrawError
from draw.model import DrawModel, nll_bound


class TrainingError(DrawError):
    """Training cannot go on: a non-finite loss or gradient."""


class MainLoop:
    """Train `model` with `optimizer` on `epoch_batches` until an extension requests a stop.

    Parameters
    ----------
    model : DrawModel
    optimizer : torch.optim.Optimizer
        Over the model's parameters.
    epoch_batches : callable
        Called once per epoch; returns that epoch's batches, float tensors (B, x_dim) on the
        model's device, whose order (and any binarization) is drawn from `generator` alone.
    generator : torch.Generator
        The data-order generator; its state at the start of each epoch is part of the state.
    extensions : iterable of SimpleExtension
        Run in this order at every event, so monitors go before the checkpoint that saves them.
    grad_clip : float
        Rescale the gradient to at most this total norm before each step (the classic
        StepClipping(10) ahead of Adam).
    fast : callable, optional
        A callable with the signature and the parameters of `model.forward`, such as
        `draw.fast.accelerate(model)`, used for training and monitoring instead of the model's
        own forward pass.
    dist : Distributed, optional
        This process's place in a torchrun job; a single process by default. The batches are
        then global: every rank gets the same ones and trains on its slice.
    """

    def __init__(self, model: DrawModel, optimizer: torch.optim.Optimizer,
                 epoch_batches: Callable[[], Iterable[Tensor]], generator: torch.Generator,
                 extensions: Iterable = (), grad_clip: float = 10.0,
                 fast: Callable | None = None, dist: Distributed | None = None):
        self.model = model
        self.optimizer = optimizer
        self.epoch_batches = epoch_batches
        self.generator = generator
        self.extensions = list(extensions)
        self.grad_clip = grad_clip
        self.dist = dist or Distributed()
        # the forward pass (x, u=None) -> (c, kl): monitoring calls it as it is; training steps
        # call the same computation through `train_forward`, a module that DDP wraps when
        # distributed, since DDP averages only the gradients of passes through its own module
        self.forward = model if fast is None else fast
        self.train_forward = wrap_model(model, self.dist, next(model.parameters()).device, fast)
        self._sigint = False       # this rank has seen a Ctrl-C (see _on_sigint)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
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

    def step(self, x: Tensor) -> None:
        """One Adam step on the bound (eq. 12) averaged over the global batch `x`; fills
        `last_batch` with global sums."""
        self.optimizer.zero_grad(set_to_none=True)
        B = x.shape[0]
        # the noise of the whole batch, as DrawModel.forward would draw it; every rank draws the
        # same (same seed, same draws so far) and keeps its slice, like that of x
        u = torch.randn((self.model.n_iter, B, self.model.sampler.z_dim), dtype=x.dtype,
                        device=x.device)                                      # (T, B, Z)
        x, u = self.dist.shard(x), self.dist.shard(u, dim=1)                  # (b, D), (T, b, Z)
        c, kl = self.train_forward(x, u)                                      # (b, D), (T, b)
        bound = nll_bound(x, c, kl)                                           # (b,)
        # the sum scaled by world / B: DDP's average over the ranks is the gradient of the
        # global batch's mean, even when the slices differ in size (1 / B in a single process)
        loss = bound.sum() * self.dist.loss_scale(B)
        loss.backward()
        grad_norm = clip_grad_norm_(self.params, self.grad_clip)    # the same on every rank
        sums = torch.cat([bound.detach().sum()[None], kl.detach().sum(dim=1)]).double()
        if self.dist.enabled:
            # one all-reduce: the global sums, and whether any rank has seen a Ctrl-C
            flag = sums.new_tensor([float(self._sigint)])
            sums = self.dist.all_reduce_sum(torch.cat([sums, flag]))          # (1 + T + 1,)
            self.status["interrupted"] = bool(sums[-1] > 0)
            sums = sums[:-1]
        # checked before the update, so a non-finite step never reaches the parameters (nor,
        # through them, a checkpoint); the one host sync per step is this check, and its
        # verdict is the same on every rank
        if not torch.isfinite(sums[0] + grad_norm):
            raise TrainingError(
                f"non-finite loss ({sums[0].item() / B:.4g}) or gradient norm "
                f"({grad_norm.item():.4g}) at epoch {self.status['epoch'] + 1}, batch "
                f"{self.status['batch'] + 1}; stopped before the update, the last saved epoch is "
                f"intact (try a lower --lr)")
        before = parameters_to_vector(self.params).detach()
        self.optimizer.step()
        step_norm = (parameters_to_vector(self.params).detach() - before).norm()
        self.last_batch = {"nll_bound_sum": sums[0], "kl_sum": sums[1:], "images": B,
                           "total_gradient_norm": grad_norm.detach(),
                           "total_step_norm": step_norm}

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
