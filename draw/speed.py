"""Speed settings for training DRAW, each an explicit choice of the run, none a side effect.

Both are derived from the one model, `draw.model.DrawModel`; neither changes its maths, its
parameters or its checkpoints. bench/README.md has what each measured.
"""
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
