"""The one exception type for bad input that the user can fix."""


class DrawError(Exception):
    """Bad input (a flag, a dataset file, a checkpoint, a log): one line naming the file or value
    and what was expected, which scripts print instead of a traceback. Modules subclass it."""


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C that stopped work cleanly, its one line saying where and what was kept; a
    KeyboardInterrupt, so callers stop as for any Ctrl-C."""
