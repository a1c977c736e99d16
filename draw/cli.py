"""What every script does around its `main`: one-line errors and meaningful exit statuses.

Scripts parse flags with `ArgumentParser` (or a settings class's `parser`, draw/training/settings.py) and
hand them to `run(main, args)`, which calls `main(**vars(args))`. A malformed flag (exit 2), a
DrawError such as an unreadable model file, or an OSError such as a full disk (exit 1) each
print one line, `error: ...`, instead of a traceback. Ctrl-C (exit 130) prints one plain line:
the Interrupted message of a run that stopped cleanly, or that the files already written are
complete, because every write is atomic (draw/atomic.py).
"""
import argparse
import sys
from typing import Callable

from draw.errors import DrawError, Interrupted


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
