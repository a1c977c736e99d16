"""The base class of the main loop's extensions (Blocks' SimpleExtension).

Every extension is a SimpleExtension: it has one no-op-by-default method per event of the loop
(draw/training/main_loop.py), and trigger keyword arguments decide which events reach its `do`:

    before_training=True     at the start of every run (fresh or resumed)
    before_first_epoch=True  at the start of a fresh run only, after before_training
    before_epoch=True, after_batch=True, after_epoch=True, after_training=True, on_error=True
    every_n_batches=N, every_n_epochs=N

Subclasses set their defaults with `kwargs.setdefault(...)`, as Blocks' do, so a caller can
still change them. An extension that must survive a resume mid-epoch keeps its state in
`state_dict` / `load_state_dict` (plain data); the Checkpoint extension saves it.
"""

EVENTS = ("before_training", "before_epoch", "after_batch", "after_epoch", "after_training",
          "on_error")
TRIGGERS = EVENTS + ("before_first_epoch",)


class SimpleExtension:
    """Base class: trigger kwargs funnelled into one `do(which_callback, *args)`.

    Parameters
    ----------
    name : str, optional
        Key of this extension's state in a checkpoint; the class name by default.
    every_n_batches, every_n_epochs : int, optional
        Also call `do("after_batch")` / `do("after_epoch")` when the iteration / epoch count is a
        multiple of N.
    **triggers : bool
        Any of before_training, before_first_epoch, before_epoch, after_batch, after_epoch,
        after_training, on_error.
    """

    def __init__(self, name: str | None = None, every_n_batches: int | None = None,
                 every_n_epochs: int | None = None, **triggers: bool):
        unknown = set(triggers) - set(TRIGGERS)
        if unknown:
            raise TypeError(f"unknown triggers {sorted(unknown)}; known: {list(TRIGGERS)}")
        self.name = name or type(self).__name__
        self.every_n_batches = every_n_batches
        self.every_n_epochs = every_n_epochs
        self.triggers = {event for event, on in triggers.items() if on}
        self.main_loop = None

    def do(self, which_callback: str, *args) -> None:
        """Act on an event; `which_callback` names it."""
        raise NotImplementedError

    def before_training(self) -> None:
        if "before_training" in self.triggers:
            self.do("before_training")
        if "before_first_epoch" in self.triggers and self.main_loop.fresh:
            self.do("before_first_epoch")

    def before_epoch(self) -> None:
        if "before_epoch" in self.triggers:
            self.do("before_epoch")

    def after_batch(self) -> None:
        n = self.every_n_batches
        if "after_batch" in self.triggers or (n and self.main_loop.status["iteration"] % n == 0):
            self.do("after_batch")

    def after_epoch(self) -> None:
        n = self.every_n_epochs
        if "after_epoch" in self.triggers or (n and self.main_loop.status["epoch"] % n == 0):
            self.do("after_epoch")

    def after_training(self) -> None:
        if "after_training" in self.triggers:
            self.do("after_training")

    def on_error(self, exception: BaseException) -> None:
        if "on_error" in self.triggers:
            self.do("on_error", exception)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
