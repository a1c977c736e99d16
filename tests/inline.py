"""Running a script at the repository's root inside the test's process, where monkeypatch and
coverage reach it (tests/ is on sys.path under pytest's default import mode)."""
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_inline(script: str, *args, monkeypatch) -> int:
    """Run a script in this process as `python script args`; its exit status."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as e:
        return e.code
    return 0
