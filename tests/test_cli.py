"""draw/cli.py before `run`: a Ctrl-C while a script still loads torch prints one line, because
every root script imports draw.cli first and draw.cli loads without torch."""
import ast
import signal
import subprocess
import sys

import pytest

from inline import ROOT

SCRIPTS = ["train-draw.py", "train-classifier.py", "sample.py", "evaluate.py", "plot-kl.py",
           "attention.py", "export-model.py"]


def test_draw_cli_loads_without_torch():
    code = "import sys, draw.cli; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"


def test_the_package_names_still_load_on_first_use():
    code = ("import sys, draw; assert 'torch' not in sys.modules; "
            "from draw import DrawModel, DrawConfig, nll_bound, ZoomableAttentionWindow; "
            "print(DrawModel.__module__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "draw.model True\n"
    with pytest.raises(AttributeError, match="module 'draw' has no attribute 'Nothing'"):
        __import__("draw").Nothing


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_imports_draw_cli_before_anything_heavy(script):
    tree = ast.parse((ROOT / script).read_text())
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    modules = [node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
               for node in imports]
    first = next(k for k, name in enumerate(modules) if name.split(".")[0] != "argparse")
    assert modules[first] == "draw.cli", modules


def test_ctrl_c_while_torch_loads_is_one_line_and_the_sigint_status():
    # the signal lands after draw.cli is in and while torch loads (or just after): as in a
    # script's first seconds
    code = ("import draw.cli; print('in', flush=True); import torch, time; "
            "print('loaded', flush=True); time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "in\n"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert err == "interrupted while starting; nothing was written\n"
    assert process.returncode == -signal.SIGINT           # a shell shows 130


def test_other_errors_before_run_keep_their_traceback():
    code = "import draw.cli; raise ValueError('a bug, to be seen whole')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.startswith("Traceback")
    assert out.stderr.endswith("ValueError: a bug, to be seen whole\n")
