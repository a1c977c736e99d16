"""On-screen windows, only when asked for and only where a display exists.

Every script in this project is headless by default: it writes files through matplotlib's Agg
backend and never touches pyplot. `--show` calls `pyplot_or_warn`, which returns pyplot with an
interactive backend, or None with a one-line warning where none can open a window (a server,
an SSH session without X forwarding, CI), so that `--show` never turns a run into an error.
"""
import os
import sys

NON_INTERACTIVE = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def pyplot_or_warn():
    """matplotlib.pyplot, ready to show windows, or None (after a warning on stderr)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        print("warning: --show needs a display (DISPLAY or WAYLAND_DISPLAY is unset); "
              "the files were written", file=sys.stderr)
        return None
    import matplotlib.pyplot as plt
    backend = plt.get_backend().lower()
    if backend in NON_INTERACTIVE:
        print(f"warning: --show needs an interactive matplotlib backend, not {backend!r}; "
              "the files were written", file=sys.stderr)
        return None
    return plt
