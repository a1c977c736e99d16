"""What every script does around its `main`: one-line errors and meaningful exit statuses.

Scripts parse flags with `ArgumentParser` and hand them to `run(main, args)`. A malformed flag
(exit 2), a DrawError such as an unreadable model file, or an OSError such as a full disk
(exit 1) and Ctrl-C (exit 130) each print one line, `error: ...`, instead of a traceback; the
files that were written are complete, because every write is atomic (draw/atomic.py).
"""
import argparse
import sys
from typing import Callable

from draw.errors import DrawError


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
    except KeyboardInterrupt:
        print("error: interrupted; the files already written are complete", file=sys.stderr)
        sys.exit(130)
