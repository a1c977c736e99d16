"""The base class of the main loop's extensions (Blocks' SimpleExtension).

An extension has one method per event of the loop (draw/training/main_loop.py), a no-op unless
a trigger keyword argument sends that event to its `do`: before_training (every run, fresh or
resumed), before_first_epoch (a fresh run only), before_epoch, after_batch, after_epoch,
after_training, on_error, or every_n_batches=N, every_n_epochs=N. A subclass lists its
defaults in `default_triggers` (one line, where Blocks' `kwargs.setdefault` took one a trigger);
a caller's keyword arguments still override them. State that must survive a resume goes
through `state_dict`.
"""

EVENTS = ("before_training", "before_epoch", "after_batch", "after_epoch", "after_training",
          "on_error")
TRIGGERS = EVENTS + ("before_first_epoch",)


class SimpleExtension:
    """Trigger kwargs funnelled into one `do(which_callback, *args)`.

    Parameters
    ----------
    name : str, optional
        Key of this extension's state in a checkpoint; the class name by default.
    every_n_batches, every_n_epochs : int, optional
        Also call `do("after_batch")` / `do("after_epoch")` when the iteration / epoch count is a
        multiple of N.
    **triggers : bool
        Any of TRIGGERS; those in `default_triggers` default to True.
    """
    default_triggers: tuple[str, ...] = ()

    def __init__(self, name: str | None = None, every_n_batches: int | None = None,
                 every_n_epochs: int | None = None, **triggers: bool):
        unknown = set(triggers) - set(TRIGGERS)
        if unknown:
            raise TypeError(f"unknown triggers {sorted(unknown)}; known: {list(TRIGGERS)}")
        triggers = dict.fromkeys(self.default_triggers, True) | triggers
        self.name = name or type(self).__name__
        self.every_n_batches, self.every_n_epochs = every_n_batches, every_n_epochs
        self.triggers = {event for event, on in triggers.items() if on}
        self.main_loop = None

    def do(self, which_callback: str, *args) -> None:
        """Act on an event; `which_callback` names it."""
        raise NotImplementedError

    def _on(self, event: str, *args, every: int | None = None, count: str = "") -> None:
        if event in self.triggers or (every and self.main_loop.status[count] % every == 0):
            self.do(event, *args)

    def before_training(self) -> None:
        self._on("before_training")
        if self.main_loop.fresh:
            self._on("before_first_epoch")

    def before_epoch(self) -> None:
        self._on("before_epoch")

    def after_batch(self) -> None:
        self._on("after_batch", every=self.every_n_batches, count="iteration")

    def after_epoch(self) -> None:
        self._on("after_epoch", every=self.every_n_epochs, count="epoch")

    def after_training(self) -> None:
        self._on("after_training")

    def on_error(self, exception: BaseException) -> None:
        self._on("on_error", exception)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
