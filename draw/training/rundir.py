"""A run directory `<name>-YYYYmmdd-HHMMSS` in --run-dir: found from --resume, named and made for
a fresh run, and its small text files (config.json, args.txt). Its lock is in lock.py.
"""
import json
import os
import time
from pathlib import Path

from draw.atomic import atomic_write_bytes
from draw.errors import DrawError
from draw.training.lock import LOCK_NAME, check_unlocked


KEPT = "epochs"      # --keep-every's folder of epoch model files inside a run directory


def kept_path(run_path: Path, name: str, epoch: int) -> Path:
    """Where --keep-every keeps the model file of an epoch: outside the run directory's top, so
    that --resume still finds one *_model.pkl there."""
    return run_path / KEPT / f"{name}_epoch-{epoch:03d}_model.pkl"


def find_checkpoint(resume: str, flag: str = "--resume") -> tuple[Path, Path | None]:
    """The run directory and its model file, None for a run killed before its first one (its
    config.json restarts it); `flag` names the argument in errors. A run killed before even
    its config.json holds nothing to continue: the error gives its args.txt's command."""
    path = Path(resume)
    if path.is_file():
        # its name gives the run's file names (NAME_model.pkl, NAME_log.pkl): another name
        # would make a second, unnamed set of files beside the run's own
        if not path.name.endswith("_model.pkl") or path.name == "_model.pkl":
            raise DrawError(f"{flag} {resume}: a run's model file is named NAME_model.pkl; "
                            f"give the run's directory or that file")
        return path.parent, path
    if path.is_dir():
        found = sorted(path.glob("*_model.pkl"))
        if not found and (path / "config.json").is_file():
            return path, None
        if not found and any((path / name).exists() for name in ("args.txt", LOCK_NAME)):
            check_unlocked(path)                    # starting this instant, not killed
            raise DrawError(f"{flag} {resume}: the run was stopped before it saved its "
                            f"settings and never trained ({resume} can be deleted); "
                            f"{_command(path)}")
        if len(found) != 1:
            raise DrawError(f"{flag} {resume}: expected one *_model.pkl file there, "
                            f"found {len(found)}")
        return path, found[0]
    raise DrawError(f"{flag} {resume}: no such run directory or model file")


def _command(run_path: Path) -> str:
    """How to start a run again: the last command line its args.txt holds."""
    try:
        lines = (run_path / "args.txt").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    commands = [line for line in lines if line.strip() and not line.startswith("#")]
    if not commands:
        return "start it again with the same flags"
    return f"start it again with: {commands[-1]}"


def stored_in_config(run_path: Path) -> dict:
    """The settings in the config.json of a run killed before its first model file."""
    try:
        stored = json.loads((run_path / "config.json").read_text())["run"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DrawError(f"--resume {run_path}: no model file, and config.json does not hold "
                        f"the run's settings") from e
    if not isinstance(stored, dict):
        raise DrawError(f"--resume {run_path}: config.json's settings are not a table")
    return stored


def experiment_name(run_path: Path | None, default: str) -> str:
    """The name a run was given when it started (config.json), which a resumed run keeps even
    where a changed setting (--lr) would spell it differently; `default` for a new run."""
    if run_path is None:
        return default
    try:
        name = json.loads((run_path / "config.json").read_text())["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return default
    return name if isinstance(name, str) else default


def new_run_path(parent: Path, name: str) -> Path:
    """`<name>-YYYYmmdd-HHMMSS` in `parent`, checked to be creatable; `make_run_dir` makes it."""
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise DrawError(f"--run-dir {parent}: {existing} is not a writable directory")
    return parent / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_run_dir(planned: Path) -> Path:
    try:
        planned.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(100):
            # two runs started in the same second get -2, -3, ... rather than one directory
            run_dir = planned.with_name(planned.name + (f"-{attempt + 1}" if attempt else ""))
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:
                continue
    except OSError as e:
        raise DrawError(f"cannot create a run directory in {planned.parent}: "
                        f"{e.strerror or e}") from e
    raise DrawError(f"cannot create a run directory in {planned.parent}: too many runs named "
                    f"{planned.name}")


# args.txt holds command lines, whose paths may be any bytes: kept as they are, not refused
def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise DrawError(f"cannot read {path}: {e.strerror or e}") from e


def write_text(path: Path, text: str) -> None:
    try:
        atomic_write_bytes(path, text.encode("utf-8", errors="surrogateescape"))
    except OSError as e:
        raise DrawError(f"cannot write {path}: {e.strerror or e}") from e


def nothing_to_do(run_path: Path | None, ckpt: dict | None, epochs: int, is_main: bool) -> bool:
    """Whether a resumed run has already trained its `epochs` (and, on the main process, say so)."""
    if ckpt is None or ckpt["epoch"] < epochs or ckpt["batch"] != 0:
        return False
    if is_main:
        print(f"{run_path} already has {ckpt['epoch']} epochs; nothing to do "
              f"(pass --epochs N to train longer)")
    return True
