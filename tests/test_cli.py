"""draw/startup.py and draw/cli.py before `run`: a Ctrl-C while a script still loads torch prints
one line, because every root script imports draw.startup first and it loads without torch; code
that imports draw as a library keeps Python's own handling."""
import ast
import signal
import subprocess
import sys

import pytest

from inline import ROOT

SCRIPTS = ["train-draw.py", "train-classifier.py", "sample.py", "evaluate.py", "plot-kl.py",
           "attention.py", "export-model.py"]
ONE_LINE = "interrupted while starting; nothing was written\n"


def python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, **kwargs)


def test_draw_startup_loads_without_torch():
    out = python("import sys, draw.startup; "
                 "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))", check=True)
    assert out.stdout == "[]\n"


def test_the_package_names_still_load_on_first_use():
    out = python("import sys, draw; assert 'torch' not in sys.modules; "
                 "assert {'DrawModel', 'nll_bound'} <= set(dir(draw)); "
                 "from draw import DrawModel, DrawConfig, nll_bound, ZoomableAttentionWindow; "
                 "print(DrawModel.__module__, 'torch' in sys.modules)", check=True)
    assert out.stdout == "draw.model True\n"
    with pytest.raises(AttributeError, match="module 'draw' has no attribute 'Nothing'"):
        __import__("draw").Nothing


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_imports_draw_startup_first(script):
    tree = ast.parse((ROOT / script).read_text())
    first = next(node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))
    assert isinstance(first, ast.Import) and first.names[0].name == "draw.startup"


def test_ctrl_c_once_draw_startup_is_in_is_one_line_and_the_sigint_status():
    # the signal comes after draw.startup is in, most likely while torch loads (else in the sleep)
    code = ("import draw.startup; print('in', flush=True); import torch, time; "
            "time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "in\n"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert err == ONE_LINE
    assert process.returncode == -signal.SIGINT           # a shell shows 130


def test_other_errors_before_run_keep_their_traceback():
    out = python("import draw.startup; raise ValueError('a bug, to be seen whole')")
    assert out.returncode == 1
    assert out.stderr.startswith("Traceback")
    assert out.stderr.endswith("ValueError: a bug, to be seen whole\n")


def test_run_gives_back_pythons_handling_and_a_library_never_loses_it():
    # once run starts main, a Ctrl-C that escapes it (here: after it, from the script itself)
    # is Python's own again: the startup line would not be true then
    out = python("import draw.startup, sys; from draw.cli import run; import argparse; "
                 "run(lambda: None, argparse.Namespace()); raise KeyboardInterrupt")
    assert out.stderr.startswith("Traceback") and out.stderr.endswith("KeyboardInterrupt\n")
    # a library user's code: draw.cli and the training modules set no hook
    out = python("import sys; hook = sys.excepthook; import draw.cli, draw.training.settings; "
                 "assert sys.excepthook is hook; raise KeyboardInterrupt")
    assert out.stderr.startswith("Traceback") and out.stderr.endswith("KeyboardInterrupt\n")
