"""What every script does around its `main`: one-line errors and meaningful exit statuses.

`run(main, args)` calls `main(**vars(args))`. A malformed flag (exit 2), a DrawError or an
OSError such as a full disk (exit 1) print one line, `error: ...`, not a traceback; Ctrl-C
(exit 130) one plain line, since every write is atomic (draw/atomic.py), also before `run`.
"""
import argparse
import sys
from typing import Callable

from draw.errors import DrawError, Interrupted


def interrupted_before_run(hook: Callable) -> Callable:
    """A sys.excepthook: a Ctrl-C that comes before `run` (while torch and a script's other
    modules load, the first seconds) prints one line instead of a traceback, as `run` does for
    one within `main`; nothing has been written yet. Every other error goes on to `hook`."""
    def excepthook(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt):
            print("interrupted while starting; nothing was written", file=sys.stderr)
        else:
            hook(kind, value, traceback)
    return excepthook


# every script imports this module first, and it loads before torch (draw/__init__.py)
sys.excepthook = interrupted_before_run(sys.excepthook)


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


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (`error: ...`, exit status 2) instead of the usage text."""

    def error(self, message: str):
        self.exit(2, f"error: {message}\n")


def run(main: Callable, args: argparse.Namespace) -> None:
    """Call main(**vars(args)) (the classic hand-off) and turn user-fixable failures into one
    line on stderr and a non-zero exit status."""
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
