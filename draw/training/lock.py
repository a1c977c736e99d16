"""One process per run directory: a lock file naming its holder, and what a killed run left.

Two processes training into one run directory would overwrite each other's checkpoints. The
first creates `RUN_DIR/.lock` exclusively (O_CREAT | O_EXCL) with its host, PID and the PID's
start time; a second stops with one line naming it. A lock whose process is gone (or whose PID
was reused) is stale: the next run removes it, and the temporary files a killed save left
(draw/atomic.py's `.NAME.*.tmp`), which only the lock's holder can have made.
"""
import json
import os
import socket
import time
from pathlib import Path

from draw.errors import DrawError

LOCK_NAME = ".lock"
UNREADABLE_GRACE_S = 5.0    # an unreadable lock younger than this may still be being written


class RunLockedError(DrawError):
    """Another live process holds the run directory."""


def _start_time(pid: int) -> str | None:
    """The process's start time since boot (Linux /proc), to tell a reused PID; None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after it
    return stat[stat.rindex(")") + 2:].split()[19]


def _alive(holder: dict) -> bool:
    """Whether the process a lock names still runs (assumed so on another host)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    # a PID past pid_t's range (a hand-edited lock) names no process: damaged, so stale
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        pass                        # someone else's process: it exists
    started = _start_time(pid)
    return started is None or holder.get("started") in (None, started)


def holder_of(run_dir: Path) -> dict | None:
    """The live process holding `run_dir` ({"host", "pid", "started"}), or None."""
    path = run_dir / LOCK_NAME
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        holder = None
    if not isinstance(holder, dict):
        # being written this instant by its holder, or cut short by a kill long ago
        try:
            fresh = time.time() - path.stat().st_mtime < UNREADABLE_GRACE_S
        except FileNotFoundError:
            return None
        return {"pid": "unknown", "host": "unknown"} if fresh else None
    return holder if _alive(holder) else None


def _refuse(run_dir: Path, holder: dict) -> RunLockedError:
    return RunLockedError(f"{run_dir} is in use by process {holder.get('pid')} on "
                          f"{holder.get('host')} (its lock file {run_dir / LOCK_NAME}); wait "
                          f"for it to finish or stop it first")


def check_unlocked(run_dir: Path) -> None:
    """Raise RunLockedError if a live process holds `run_dir`; takes nothing."""
    holder = holder_of(run_dir)
    if holder is not None:
        raise _refuse(run_dir, holder)


class RunLock:
    """Hold `run_dir` for this process: `acquire()` (RunLockedError if held), `release()`."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.held = False

    def acquire(self) -> "RunLock":
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": _start_time(os.getpid())}
        for _ in range(2):      # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = holder_of(self.run_dir)
                if holder is not None:
                    raise _refuse(self.run_dir, holder) from None
                self.path.unlink(missing_ok=True)      # stale: its process is gone
                continue
            except OSError as e:
                raise DrawError(f"cannot lock {self.run_dir}: {e.strerror or e}") from e
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            remove_stale_temporaries(self.run_dir)
            return self
        raise _refuse(self.run_dir, {"pid": "unknown", "host": "unknown"})

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the `.NAME.*.tmp` files of saves that a kill interrupted; returns them."""
    removed = []
    for tmp in run_dir.glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
