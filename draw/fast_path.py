"""The fast path of training: a model's glimpses compiled by `torch.compile`, and denormal floats
flushed to zero on the CPU; each an explicit choice of the run, none a side effect.

Both are derived from the one model, DRAW's `draw.model.DrawModel` or the classifier's
`draw.classifier.AttentionClassifier`; neither changes its maths, its parameters or its
checkpoints. bench/README.md has what each measured.
"""
import math
import os
import shutil
from collections.abc import Callable
from typing import Protocol, TypeVar

import torch


def set_flush_denormal(on: bool) -> bool:
    """Treat denormal floats (magnitudes below 1.2e-38 in float32) as zero on the CPU, or not.

    This is `torch.set_flush_denormal`, a setting of the process rather than of a model, so a
    training run makes it once, from its settings, and says so. x86 CPUs compute on denormal
    floats many times slower. The attention filterbank no longer makes any (its far tails are
    exact zeros, see `ZoomableAttentionWindow.filterbank_matrices`), so flushing no longer speeds
    DRAW up measurably; it stays a choice for bricks that do make them.

    Parameters
    ----------
    on : bool
        True flushes denormals to zero, False computes them (PyTorch's default).

    Returns
    -------
    bool
        Whether the CPU supports the setting (`torch.set_flush_denormal`'s own answer); when it
        does not, nothing changed.
    """
    return torch.set_flush_denormal(on)


# Glimpses traced into one compiled graph. Per call of a compiled function Dynamo checks its
# guards and AOTAutograd runs its forward and backward wrappers, and a graph of several
# glimpses fuses element-wise work across them (bench/README.md has the speed-ups measured).
GLIMPSES_PER_CALL = 8
# A batch shape has two or three graphs (the first call, whose state needs no gradient; the
# others; a shorter last one), with gradients and without: room for several batch shapes (the
# training batch, an epoch's tail, evaluation's) before Dynamo would fall back to eager.
RECOMPILE_LIMIT = 32


class Glimpsing(Protocol):
    """What `compile_glimpses` needs of a model: its T glimpses run through its own method
    `glimpses` in calls of `glimpses_per_call` (None: all T in one). DrawModel (`unroll`) and
    AttentionClassifier (`forward`) are both so organised."""
    n_iter: int
    glimpses_per_call: int | None
    glimpses: Callable


ModelT = TypeVar("ModelT", bound=Glimpsing)


def compile_glimpses(model: ModelT, per_call: int = GLIMPSES_PER_CALL, **options) -> ModelT:
    """Compile the model's glimpses with `torch.compile`, `per_call` of them per graph; returns
    the model.

    The model runs its T glimpses through `model.glimpses` in calls of
    `model.glimpses_per_call` (`Glimpsing`): DRAW's `forward` and `log_weight` (a loop over
    `step`), the classifier's `forward` (read, LSTM). So training and evaluation run them
    compiled, forward and backward. The graphs are traced from the model's own methods (a
    subclass's overrides included) and its bricks: no second copy of the maths. T is cut into
    calls as equal as they can be (T=10: two of 5; T=17: 6, 6 and 5). DRAW's sampling
    (`decode` alone) stays eager. The first call compiles: a minute or more on a small CPU,
    repaid only by a long run (bench/README.md).

    With inductor (the default backend) its `inplace_buffers` is off: on, torch 2.13's CPU
    inductor computed wrong gradients for DRAW's graphs of several glimpses while the loss
    stayed right (bench/README.md). tests/test_fast_path.py and
    tests/test_classifier_compile.py compile with inductor itself; bench/compile_check.py
    checks a trained DRAW model.

    Parameters
    ----------
    model : DrawModel, AttentionClassifier, or any model that is `Glimpsing`
    per_call : int
        At most this many glimpses per compiled call.
    **options
        Passed to `torch.compile`, e.g. backend="aot_eager" (traces forward and backward graphs
        without generating code: how most tests check them). An inductor `mode` or `options`
        dict is merged with inplace_buffers=False rather than replacing it.
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


# Compiling costs a fixed time and then saves a few ms per glimpse trained on a CPU
# (bench/README.md): runs of this many glimpses (steps x T) and more save several minutes;
# shorter ones, such as the quick start (9,600), would lose. The classifier's glimpses repaid
# their compiling after 23,000-30,000 (bench/README.md, "Classifier"): the same
# threshold serves both.
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
    """None if inductor compiles and runs a tiny function on `device` here, else the first line
    of its error: a compiler on the PATH may still lack Python's headers or OpenMP. Seconds,
    most of them importing inductor, which a compiling run pays anyway."""
    try:
        probe = torch.compile(lambda t: torch.sigmoid(t) * 2, dynamic=False)
        probe(torch.ones(4, device=device))
    except Exception as e:    # whatever broke, the run can train eager instead
        lines = str(e).strip().splitlines() or [type(e).__name__]
        return lines[0][:200]
    return None


def compile_choice(setting: bool | None, glimpses: int, device: torch.device
                   ) -> tuple[bool, str]:
    """Whether a run compiles its glimpses, and why, in words for its header.

    Parameters
    ----------
    setting : bool or None
        --compile (True), --no-compile (False), or neither (None): compile when the run has at
        least AUTO_COMPILE_GLIMPSES glimpses left to train and inductor works here (a compiler
        on the PATH, and a tiny function compiled and run: `toolchain_error`).
    glimpses : int
        Training steps left times T.
    device : torch.device
    """
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
