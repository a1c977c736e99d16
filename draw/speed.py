"""Speed settings for training DRAW, each an explicit choice of the run, none a side effect.

Both are derived from the one model, `draw.model.DrawModel`; neither changes its maths, its
parameters or its checkpoints. bench/README.md has what each measured.
"""
import os
import shutil

import torch

from draw.model import DrawModel


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


def compile_glimpse(model: DrawModel, **options) -> DrawModel:
    """Compile the model's glimpse, `model.step`, with `torch.compile`; returns the model.

    `forward` and `log_weight` loop over `step`, so training and evaluation run the compiled
    glimpse, forward and backward; the compiled function is traced from the model's own `step`
    (a subclass's override included) and its bricks, so there is no second copy of the maths.
    Sampling (`decode` alone) stays eager. The first call compiles: minutes on a small CPU,
    repaid only by a long run (bench/README.md).

    Parameters
    ----------
    model : DrawModel
    **options
        Passed to `torch.compile`, e.g. mode="max-autotune" or backend="aot_eager" (traces
        forward and backward graphs without generating code: how the tests check them).
    """
    # one graph per glimpse shape, not one per unrolled loop: a step is traced once and replayed
    # T times (a second trace for step 1, whose state needs gradients where step 0's did not)
    model.step = torch.compile(model.step, **({"dynamic": False} | options))
    return model


# Compiling costs a fixed time (about 25 s on 2 idle cores, several minutes on a loaded one) and
# then saves about 2-4 ms per glimpse trained on a CPU (T=64: 616 against 757 ms per step;
# T=10: 107 against 147; bench/README.md). Runs of this many glimpses (steps x T) and more save
# several minutes at least; shorter ones, such as the quick start (12,000), would lose.
AUTO_COMPILE_GLIMPSES = 100_000


def compiler_missing(device: torch.device) -> str | None:
    """Why `torch.compile` cannot generate code for `device` here, or None if it can: Python
    support, and the C++ compiler (CPU) or Triton (CUDA) that inductor needs."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if device.type == "cpu":
        cxx = os.environ.get("CXX", "g++")
        return None if shutil.which(cxx) else f"no C++ compiler ({cxx}) on the PATH"
    if device.type == "cuda":
        from torch.utils._triton import has_triton
        return None if has_triton() else "Triton is not installed"
    return f"not tried on {device.type}"


def compile_choice(setting: bool | None, glimpses: int, device: torch.device
                   ) -> tuple[bool, str]:
    """Whether a run compiles its glimpse, and why, in words for its header.

    Parameters
    ----------
    setting : bool or None
        --compile (True), --no-compile (False), or neither (None): compile when the run has at
        least AUTO_COMPILE_GLIMPSES glimpses left to train and a compiler is there.
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
    return True, f"yes: {glimpses:,} glimpses to train (--no-compile stops it)"
