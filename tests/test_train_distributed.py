"""train-draw.py under torchrun (2 gloo processes on this machine) against a single process.

With --bs the global batch, every rank drawing the same batches and noise and keeping its slice,
a 2-process run must take the steps of a 1-process run (up to float summation order), log the
same global numbers in the same format, and leave exactly one set of files, written by rank 0.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from draw.checkpoint import load_log, load_model
from draw.model import DrawModel
from draw.training.draw_job import main

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this torch build has no gloo backend")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train-draw.py"
# 201 = 4 batches of 50 and a tail batch of one image: rank 1's slice of it is empty
FLAGS = dict(dataset="sample", subset=201, batch_size=50, epochs=2, n_iter=2, enc_dim=8,
             dec_dim=8, z_dim=3, attention="2,3", seed=3)
ARGS = ["--dataset", "sample", "--subset", "201", "--bs", "50", "--epochs", "2", "--niter", "2",
        "--enc-dim", "8", "--dec-dim", "8", "--z-dim", "3", "--attention", "2,3", "--seed", "3"]
LONGNAME = "sample-r2-w3-t2-enc8-dec8-z3-lr13"
HANG_GUARD_S = 600     # only so that a broken build fails instead of hanging; never reached


def the_run_dir(parent: Path) -> Path:
    (run_dir,) = [p for p in parent.iterdir() if p.is_dir()]
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The torchrun run (in the background) and the same flags in this process, in parallel."""
    multi, single = tmp_path_factory.mktemp("torchrun"), tmp_path_factory.mktemp("single")
    # sys.executable -m torch.distributed.run is torchrun of this virtual environment
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(SCRIPT), *ARGS], cwd=multi, env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    main(**FLAGS, run_dir=str(single))
    out, err = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == 0, err
    return {"multi": the_run_dir(multi), "single": the_run_dir(single), "out": out}


def untimed(rows):
    return [{k: v for k, v in row.items() if not k.startswith("time")} for row in rows]


def test_one_set_of_outputs_written_by_rank_0(runs):
    multi, single, out = runs["multi"], runs["single"], runs["out"]
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())
    assert re.fullmatch(r"sample-\d{8}-\d{6}", multi.name)
    # one header and one line per epoch: only rank 0 prints
    assert out.count(f"Running experiment {LONGNAME}") == 1
    assert "processes: 2 (torchrun, DistributedDataParallel over gloo)" in out
    assert "batch size: 50 in all, 25-25 per process" in out
    assert len(re.findall(r"^epoch +\d+ \| iter", out, flags=re.M)) == 3
    assert len((multi / "args.txt").read_text().splitlines()) == 1
    config = json.loads((multi / "config.json").read_text())
    assert config["processes"] == 2
    assert config["run"] == json.loads((single / "config.json").read_text())["run"]


def test_log_has_the_single_process_format_and_numbers(runs):
    rows = load_log(runs["multi"] / "sample_log.pkl")
    reference = load_log(runs["single"] / "sample_log.pkl")
    assert [set(row) for row in rows] == [set(row) for row in reference]
    assert [(r["epoch"], r["iteration"]) for r in rows] == [(0, 0), (1, 5), (2, 10)]
    assert "train_kl_term_1" in rows[1] and "test_kl_term_1" in rows[1]
    # global numbers: all-reduced training sums, sharded and all-reduced evaluation
    for row, ref in zip(untimed(rows), untimed(reference)):
        assert row == pytest.approx(ref, rel=1e-5, abs=1e-9)


def test_final_parameters_equal_the_single_process_run(runs):
    model, ckpt = load_model(runs["multi"] / "sample_model.pkl")
    ref_model, _ = load_model(runs["single"] / "sample_model.pkl")
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["batch"]) == (2, 10, 0)
    for (name, a), (_, b) in zip(model.state_dict().items(), ref_model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    # and the 10 steps moved the parameters far beyond that tolerance from where both began
    torch.manual_seed(FLAGS["seed"])
    initial = DrawModel.from_config(model.config).state_dict()
    assert max((a - initial[name]).abs().max().item()
               for name, a in model.state_dict().items()) > 1e-3


def test_a_torchrun_checkpoint_resumes_in_one_process(runs):
    """Rank 0's checkpoint holds the whole job's state: a 2-process run continued by one process
    goes on as the 1-process run does."""
    for key in ("multi", "single"):
        main(resume=str(runs[key]), epochs=3)
    model, ckpt = load_model(runs["multi"] / "sample_model.pkl")
    ref_model, _ = load_model(runs["single"] / "sample_model.pkl")
    assert (ckpt["epoch"], ckpt["iteration"]) == (3, 15)
    for (name, a), (_, b) in zip(model.state_dict().items(), ref_model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert "# resumed" in (runs["multi"] / "args.txt").read_text()
