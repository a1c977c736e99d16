"""What every script does around its `main`: one-line errors and meaningful exit statuses.

`run(main, args)` calls `main(**vars(args))`. A malformed flag (exit 2), a DrawError or an
OSError such as a full disk (exit 1) print one line, `error: ...`, not a traceback; Ctrl-C
(exit 130) one plain line, since every write is atomic (draw/atomic.py), and before `run` too
(draw/startup.py).
"""
import argparse
import math
import sys
from typing import Callable

from draw.errors import DrawError, Interrupted


class StartupHook:
    """sys.excepthook while a script starts (draw/startup.py installs it): a Ctrl-C before `run`
    calls `main` prints one line instead of a traceback, as `run` does for one within `main`;
    nothing has been written yet. Every other error goes on to the hook it replaced, which
    `run` puts back."""

    def __init__(self, previous: Callable):
        self.previous = previous

    def __call__(self, kind, value, traceback) -> None:
        if issubclass(kind, KeyboardInterrupt):
            print("interrupted while starting; nothing was written", file=sys.stderr)
        else:
            self.previous(kind, value, traceback)


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def seed(text: str) -> int:
    """An argparse type: a seed of torch.Generator.manual_seed, which takes 64 bits."""
    value = int(text)
    if not 0 <= value < 2 ** 64:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**64 - 1, got {text!r}")
    return value


def temperature(text: str) -> float:
    """An argparse type: the temperature of prior samples, a finite number above 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number above 0, got {text!r}")
    return value


def temperature_list(text: str) -> tuple[float, ...]:
    """An argparse type: comma-separated temperatures, each a finite number above 0, each once
    (the rows they name would collide)."""
    try:
        values = tuple(temperature(part) for part in text.split(","))
    except (ValueError, argparse.ArgumentTypeError):
        values = ()
    if not values or len(set(values)) < len(values):
        raise argparse.ArgumentTypeError(f"expected numbers above 0, comma-separated, each "
                                         f"once, got {text!r}")
    return values


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (`error: ...`, exit status 2) instead of the usage text."""

    def error(self, message: str):
        self.exit(2, f"error: {message}\n")


def run(main: Callable, args: argparse.Namespace) -> None:
    """Call main(**vars(args)) (the classic hand-off) and turn user-fixable failures into one
    line on stderr and a non-zero exit status."""
    if isinstance(sys.excepthook, StartupHook):
        sys.excepthook = sys.excepthook.previous     # started: what happens now is main's
    try:
        main(**vars(args))
    except (DrawError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted; the files already written are complete", file=sys.stderr)
        sys.exit(130)
