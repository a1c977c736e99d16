"""The one exception type for bad input that the user can fix."""


class DrawError(Exception):
    """Bad input: a flag, a dataset file, a checkpoint or a log that cannot be used.

    Its message is one line that names the file or value and what was expected; scripts print it
    and exit non-zero instead of showing a traceback. Each module subclasses it (DatasetError,
    CheckpointError, ...) so callers can catch one kind or all.
    """


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C that stopped work cleanly: its message (one line) says where and what was kept.

    A KeyboardInterrupt, so that callers (scripts, notebooks) stop as for any Ctrl-C; scripts
    print the message as it is, not as an error.
    """
