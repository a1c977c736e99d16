"""The fast path of training: a model's glimpses compiled by `torch.compile`, and denormal floats
flushed to zero on the CPU; each an explicit choice of the run, neither changing the one model's
maths, parameters or checkpoints (DrawModel's or AttentionClassifier's). bench/README.md has
what each measured.
"""
import math
import os
import shutil
from collections.abc import Callable
from typing import Protocol, TypeVar

import torch


def set_flush_denormal(on: bool) -> bool:
    """Treat denormal floats (below 1.2e-38 in float32), on which x86 CPUs compute many times
    slower, as zero on the CPU, or not: a setting of the process, made once by a run. Returns
    whether the CPU supports it (else nothing changed). DRAW's filterbank makes none (its far
    tails are exact zeros); the choice stays for bricks that do."""
    return torch.set_flush_denormal(on)


# Glimpses per compiled graph: each call pays Dynamo's guards and AOTAutograd's wrappers, and a
# graph of several glimpses fuses element-wise work across them.
GLIMPSES_PER_CALL = 8
# A batch shape has two or three graphs (first call, the others, a shorter last), with and
# without gradients: room for several batch shapes before Dynamo falls back to eager.
RECOMPILE_LIMIT = 32


class Glimpsing(Protocol):
    """A model that runs its T glimpses through its own `glimpses`, in calls of
    `glimpses_per_call` (None: all T in one): DrawModel and AttentionClassifier."""
    n_iter: int
    glimpses_per_call: int | None
    glimpses: Callable


ModelT = TypeVar("ModelT", bound=Glimpsing)


def compile_glimpses(model: ModelT, per_call: int = GLIMPSES_PER_CALL, **options) -> ModelT:
    """Compile `model.glimpses` with `torch.compile`, at most `per_call` glimpses per graph,
    in calls as equal as they can be (T=10: two of 5; T=17: 6, 6 and 5); returns the model.

    Training and evaluation then run compiled, forward and backward, traced from the model's
    own methods and bricks: no second copy of the maths. DRAW's sampling stays eager.
    `options` go to `torch.compile` (e.g. backend="aot_eager", as most tests use). Inductor's
    `inplace_buffers` stays off, merged into any `mode` or `options`: on, torch 2.13's CPU
    inductor computed wrong gradients for graphs of several glimpses (bench/README.md).
    """
    calls = math.ceil(model.n_iter / per_call)
    model.glimpses_per_call = math.ceil(model.n_iter / calls)
    # one graph per shape (dynamic=False): the batch and the calls' lengths are fixed in a run
    options = {"dynamic": False, "recompile_limit": RECOMPILE_LIMIT} | options
    if options.get("backend", "inductor") == "inductor":
        from torch._inductor import list_mode_options    # here: imported by compiling runs only
        mode = options.pop("mode", None)
        tuned = list_mode_options(mode) if mode else {}
        options["options"] = tuned | {"inplace_buffers": False} | options.get("options", {})
    model.glimpses = torch.compile(model.glimpses, **options)
    return model


# Compiling costs a fixed time, then saves a few ms per glimpse on a CPU: runs of this many
# glimpses (steps x T) save minutes, shorter ones (the quick start's 9,600) would lose
# (bench/README.md, for DRAW and the classifier).
AUTO_COMPILE_GLIMPSES = 100_000


def compiler_missing(device: torch.device) -> str | None:
    """Why `torch.compile` cannot generate code for `device` here, or None if it can: Python
    support, and the C++ compiler (CPU) or Triton (CUDA) that inductor needs."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if device.type == "cpu":
        from torch._inductor import config
        cxx = os.environ.get("CXX") or config.cpp.cxx[-1]                      # g++ on Linux
        return None if shutil.which(cxx) else f"no C++ compiler ({cxx}) on the PATH"
    if device.type == "cuda":
        from torch.utils._triton import has_triton
        return None if has_triton() else "Triton is not installed"
    return f"not tried on {device.type}"


def toolchain_error(device: torch.device) -> str | None:
    """None if inductor compiles and runs a tiny function on `device`, else its error's first
    line (a compiler may lack Python's headers or OpenMP); seconds, mostly importing inductor."""
    try:
        probe = torch.compile(lambda t: torch.sigmoid(t) * 2, dynamic=False)
        probe(torch.ones(4, device=device))
    except Exception as e:    # whatever broke, the run can train eager instead
        lines = str(e).strip().splitlines() or [type(e).__name__]
        return lines[0][:200]
    return None


def compile_choice(setting: bool | None, glimpses: int, device: torch.device
                   ) -> tuple[bool, str]:
    """Whether a run compiles its glimpses, and why, in words for its header: as `setting`
    (--compile, --no-compile) says, else when `glimpses` (steps left x T) reach
    AUTO_COMPILE_GLIMPSES and inductor works on `device`."""
    if setting is not None:
        return setting, "yes (--compile)" if setting else "no (--no-compile)"
    if glimpses < AUTO_COMPILE_GLIMPSES:
        return False, (f"no: {glimpses:,} glimpses to train, fewer than the "
                       f"{AUTO_COMPILE_GLIMPSES:,} that repay compiling (--compile forces it)")
    missing = compiler_missing(device)
    if missing is not None:
        return False, f"no: {missing}"
    error = toolchain_error(device)
    if error is not None:
        return False, f"no: inductor failed on a test function ({error})"
    return True, f"yes: {glimpses:,} glimpses to train (--no-compile stops it)"
