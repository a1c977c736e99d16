"""draw.fast_path: the compiled glimpses against the plain model in float64, when a run compiles, the
denormal setting, and the benchmark's FLOP count and output (the naive port's and bf16-mixed's
rows), bench/ab.py's two-tree timing, bench/gpu_check.py's agreement check on a CPU."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from draw.fast_path import (AUTO_COMPILE_GLIMPSES, compile_choice, compile_glimpses,
                            compiler_missing, set_flush_denormal, toolchain_error)
from draw.model import DrawConfig, DrawModel, nll_bound

CONFIGS = [DrawConfig(channels=2, height=6, width=5, n_iter=3, enc_dim=7, dec_dim=9, z_dim=3,
                      read_N=2, write_N=3),
           DrawConfig(height=5, width=5, n_iter=3, enc_dim=7, dec_dim=9, z_dim=3)]


def make(cfg, seed=0):
    """A float64 model with large random weights, so windows move and every path carries signal."""
    torch.manual_seed(seed)
    model = DrawModel.from_config(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def loss_and_grads(model, x, u):
    c, kl = model(x, u)
    # weights per example and a square on kl: every output gets its own, non-uniform gradient
    loss = (torch.arange(1, x.shape[0] + 1, dtype=x.dtype) * nll_bound(x, c, kl)).sum() \
        + (kl ** 2).sum()
    return c, kl, torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("per_call", [8, 2], ids=["one call", "calls of 2 and 1"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["attention", "full"])
def test_compiled_glimpses_equal_plain_in_float64(cfg, per_call):
    # aot_eager traces the glimpses' forward and backward graphs as inductor would get them,
    # without generating code (minutes on 2 cores); bench/gpu_check.py runs inductor itself
    torch._dynamo.reset()
    plain = make(cfg)
    compiled = compile_glimpses(make(cfg), per_call=per_call, backend="aot_eager")
    assert compiled.glimpses_per_call == min(per_call, cfg.n_iter)     # T = 3: 3, or 2 + 1
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, cfg.x_dim, generator=g, dtype=torch.float64)
    u = torch.randn(cfg.n_iter, 4, cfg.z_dim, generator=g, dtype=torch.float64)
    c1, kl1, g1 = loss_and_grads(plain, x, u)
    for _ in range(2):          # the second call runs the graphs traced by the first
        c2, kl2, g2 = loss_and_grads(compiled, x, u)
        torch.testing.assert_close(c2, c1, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(kl2, kl1, rtol=1e-12, atol=1e-12)
        for (name, _), a, b in zip(plain.named_parameters(), g1, g2):
            assert a.abs().max() > 0, name
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=name)
    # the state_dict is the model's: a checkpoint of either loads into the other
    assert compiled.state_dict().keys() == plain.state_dict().keys()


def test_compile_choice_follows_the_flag_else_the_run_length(monkeypatch):
    cpu = torch.device("cpu")
    assert compile_choice(True, 1, cpu) == (True, "yes (--compile)")
    assert compile_choice(False, 10 ** 9, cpu) == (False, "no (--no-compile)")
    short, why = compile_choice(None, AUTO_COMPILE_GLIMPSES - 1, cpu)
    assert not short and why.startswith("no: 99,999 glimpses to train, fewer than the 100,000")
    if compiler_missing(cpu) is None:
        assert compile_choice(None, AUTO_COMPILE_GLIMPSES, cpu) == (
            True, "yes: 100,000 glimpses to train (--no-compile stops it)")
    monkeypatch.setenv("CXX", "no-such-compiler-for-draw")
    assert compiler_missing(cpu) == "no C++ compiler (no-such-compiler-for-draw) on the PATH"
    assert compile_choice(None, 10 ** 9, cpu) == (
        False, "no: no C++ compiler (no-such-compiler-for-draw) on the PATH")
    assert compile_choice(True, 10 ** 9, cpu)[0]        # the flag is obeyed, as asked
    monkeypatch.delenv("CXX")

    def broken(*args, **kwargs):
        raise RuntimeError("C++ compile error\nfatal error: Python.h: No such file")
    monkeypatch.setattr(torch, "compile", broken)
    assert toolchain_error(cpu) == "C++ compile error"
    if compiler_missing(cpu) is None:
        assert compile_choice(None, 10 ** 9, cpu) == (
            False, "no: inductor failed on a test function (C++ compile error)")


@pytest.mark.skipif(compiler_missing(torch.device("cpu")) is not None,
                    reason="inductor needs a C++ compiler")
def test_inductor_gradients_of_several_glimpses():
    """Inductor itself (C++ code, about 25 s to compile): two glimpses in one graph give the
    eager gradients. With inductor's inplace_buffers on (torch 2.13) this model's were 9e-4 off
    and the paper model's 50-97% at T=64, while the loss stayed right (draw/fast_path.py)."""
    torch._dynamo.reset()
    cfg = DrawConfig(height=12, width=12, n_iter=2, enc_dim=16, dec_dim=16, z_dim=4, read_N=2,
                     write_N=3)
    plain, compiled = make(cfg).float(), compile_glimpses(make(cfg).float(), per_call=2)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, cfg.x_dim, generator=g).bernoulli(generator=g)
    u = torch.randn(cfg.n_iter, 8, cfg.z_dim, generator=g)
    (c1, kl1, g1), (c2, kl2, g2) = loss_and_grads(plain, x, u), loss_and_grads(compiled, x, u)
    torch.testing.assert_close(c2, c1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kl2, kl1, rtol=1e-5, atol=1e-5)
    for (name, _), a, b in zip(plain.named_parameters(), g1, g2):
        assert ((b - a).norm() / a.norm()).item() < 1e-4, name


def test_compile_options_keep_inplace_buffers_off(monkeypatch):
    """Whatever inductor options or mode a caller adds, inplace_buffers stays off unless the
    caller sets it; other backends get no inductor options."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    cfg = CONFIGS[1]
    compile_glimpses(make(cfg))
    compile_glimpses(make(cfg), mode="max-autotune", options={"max_autotune_gemm": False})
    compile_glimpses(make(cfg), options={"inplace_buffers": True})
    compile_glimpses(make(cfg), backend="aot_eager")
    assert calls[0] == {"dynamic": False, "recompile_limit": 32,
                        "options": {"inplace_buffers": False}}
    assert "mode" not in calls[1] and calls[1]["options"]["max_autotune"] is True
    assert calls[1]["options"]["inplace_buffers"] is False
    assert calls[1]["options"]["max_autotune_gemm"] is False
    assert calls[2]["options"] == {"inplace_buffers": True}
    assert calls[3] == {"dynamic": False, "recompile_limit": 32, "backend": "aot_eager"}


def test_unrolling_in_calls_of_any_length_changes_nothing():
    """`unroll` in calls of 1, 2 (2 + 1) or 3 glimpses gives the same numbers bit for bit."""
    cfg = CONFIGS[0]
    model = make(cfg)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, cfg.x_dim, generator=g, dtype=torch.float64)
    u = torch.randn(cfg.n_iter, 4, cfg.z_dim, generator=g, dtype=torch.float64)
    results = []
    for per_call in (None, 1, 2, 3):
        model.glimpses_per_call = per_call
        results.append(loss_and_grads(model, x, u))
    for c, kl, grads in results[1:]:
        assert torch.equal(c, results[0][0]) and torch.equal(kl, results[0][1])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][2]))


@pytest.fixture
def denormals_restored():
    yield
    torch.set_flush_denormal(False)


def test_set_flush_denormal_switches_both_ways(denormals_restored):
    assert set_flush_denormal(False) in (True, False)   # before the tensor: an earlier test
    tiny = torch.tensor([1e-40])                         # may have left flushing on
    assert (tiny * 1.0).item() > 0
    if not set_flush_denormal(True):             # False where the CPU cannot flush
        pytest.skip("this CPU cannot flush denormals")
    assert (tiny * 1.0).item() == 0
    set_flush_denormal(False)
    assert (tiny * 1.0).item() > 0


def test_benchmark_flop_count_matches_hand_count(bench_script):
    bench = bench_script("bench")
    cfg = DrawConfig(n_iter=64, read_N=2, write_N=5)
    # per step and image, multiply-adds: encoder (8 + 256 + 256) x 1024, decoder
    # (100 + 256) x 1024, sampler 256 x 200, heads 256 x (5 + 5 + 25), read 2x28x56 + 4x28x2,
    # write 5x5x28 + 28x5x28; times 2 FLOPs, 3 for forward and backward, 64 steps
    macs = 520 * 1024 + 356 * 1024 + 256 * 200 + 256 * 35 + 3136 + 224 + 700 + 3920
    assert bench.train_flops_per_image(cfg) == 6 * macs * 64
    assert round(bench.train_flops_per_image(cfg) / 1e6, 1) == 370.6


def test_benchmark_runs_and_reports_every_path(capsys, bench_script):
    bench = bench_script("bench")
    bench.main(quick=True, niters="2", batch_size=3, threads=None, device="cpu", repeats=1,
               warmup=1, compile=False, bf16=True, clock="cpu", sigma=1.0, read_N=2,
               write_N=3, enc_dim=6, dec_dim=5, z_dim=2, seed=0)
    out = capsys.readouterr().out
    assert "GFLOP/s" in out and "window sigma 1.0 px, fused Adam" in out
    assert all(p in out.splitlines()[1] for p in ("fp32", "bf16", "bf32"))  # the ceilings
    # a row: T (3 characters), the path name (23, with spaces in it), then columns without
    rows = [[line[4:27].strip(), *line[28:].split()] for line in out.splitlines()
            if line.startswith("  2 ") and "ceiling" not in line]
    assert [row[0] for row in rows] == ["naive port", "naive port, flushed", "plain",
                                        "plain, flushed", "bf16-mixed", "matmul medium"]
    assert [row[1] for row in rows] == ["fp32"] * 4 + ["bf16", "bf32"]
    assert rows[0][3] == "1.00" and rows[2][4] == "1.00"     # naive and plain against themselves
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows)   # train img/s, x naive
    assert [row[5] != "n/a" for row in rows] == [False, False, True, True, False, False]
    assert all(float(row[-2].rstrip("%")) > 0 for row in rows)           # % ceiling
    ceiling = [line for line in out.splitlines() if line.startswith("  2 ceiling")]
    assert len(ceiling) == 1 and all(p in ceiling[0] for p in ("fp32", "bf16", "bf32"))


def test_ab_times_two_trees_in_turn(tmp_path):
    """bench/ab.py: the same tree twice, two steps each (the second with the zero initial
    state of trees from before section 2.2's learned one); the reference's ratio to itself is 1."""
    root = Path(__file__).resolve().parents[1]
    script = root / "bench" / "ab.py"
    run = subprocess.run([sys.executable, str(script), str(root), f"{root}:zero-start",
                          "--niters", "1", "--steps", "2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines()]
    assert [row[0] for row in rows] == ["T=1", "T=1"] and len(rows) == 2
    assert rows[0][4:6] == ["first/this", "1.000"] and float(rows[1][5]) > 0
    bad = subprocess.run([sys.executable, str(script), str(tmp_path), str(root)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "error: give two or more folders that each hold a draw/ package"]


def test_ab_times_the_naive_port_bf16_mixed_and_ddp_against_it():
    """bench/ab.py FOLDER:naive is the reference of the ratios, FOLDER:bf16-mixed a tree's step
    in bf16-mixed precision, FOLDER:ddp its step split across two DDP ranks (gloo); an option
    it does not know is an error."""
    root = Path(__file__).resolve().parents[1]
    script = root / "bench" / "ab.py"
    trees = [f"{root}:naive", f"{root}:bf16-mixed", f"{root}:ddp"]
    run = subprocess.run([sys.executable, str(script), *trees, "--niters", "1", "--steps", "2",
                          "--threads", "2", "--clock", "wall"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines()]
    assert [row[1] for row in rows] == trees
    assert rows[0][4:6] == ["first/this", "1.000"]
    assert float(rows[1][5]) > 0 and float(rows[2][5]) > 0
    bad = subprocess.run([sys.executable, str(script), f"{root}:naive,compile", str(root)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "naive alone" in bad.stderr
    bad = subprocess.run([sys.executable, str(script), f"{root}:compile=0", str(root)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "compile=N" in bad.stderr
    # a rank's CPU time would leave out the all-reduce's wait
    bad = subprocess.run([sys.executable, str(script), str(root), f"{root}:ddp"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and bad.stderr.strip() == (
        "error: :ddp needs --clock wall and --threads 2 or more")


def test_gpu_check_agreement_runs_bf16_mixed_on_a_cpu(capsys, monkeypatch, bench_script):
    """bench/gpu_check.py's part 1 is device-agnostic: float32 and bf16-mixed of a small model
    against float64 agree within their tolerances here, a tolerance of 0 does not."""
    check = bench_script("gpu_check")
    cfg = DrawConfig(n_iter=3, read_N=2, write_N=3, enc_dim=16, dec_dim=12, z_dim=5)
    eager = {name: v for name, v in check.AGREEMENT.items() if not v[0]}
    assert {v[2] for v in eager.values()} == {"float32", "TF32", "bf16-mixed"}
    assert check.check_agreement(cfg, 8, torch.device("cpu"), eager)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in lines[1:]] == ["agrees"] * 3
    monkeypatch.setitem(check.TOLERANCES, "bf16-mixed", (0.0, 0.0))
    assert not check.check_agreement(cfg, 8, torch.device("cpu"),
                                     {"plain, bf16-mixed": eager["plain, bf16-mixed"]})
    assert capsys.readouterr().out.splitlines()[-1].endswith("DISAGREES")


def test_step_parts_times_the_passes_and_the_update_apart(capsys, bench_script):
    """bench/step_parts.py: both parts of a step timed, their shares adding up."""
    bench_script("step_parts").main(niter=2, threads=1, steps=2, compile=False)
    line = capsys.readouterr().out.strip()
    passes, rest, share = (float(v) for v in re.findall(
        r"forward\+backward ([\d.]+) ms, clip\+check\+Adam\+step norm ([\d.]+) ms \(([\d.]+)%",
        line)[0])
    assert passes > 0 and rest > 0
    assert abs(share - 100 * rest / (passes + rest)) < 0.5      # printed to 0.1 ms and 0.1%
