"""Mixed precision of the training step: the `--precision` names (Lightning's), their autocast
context, and whether a device computes bfloat16 natively.

"32" trains in float32. "bf16-mixed" runs the training forward pass under bfloat16 autocast:
the matrix products (linear maps, LSTM gates, the filterbank's `bmm`, eqs. 27 and 29) take
bfloat16 inputs, while parameters, gradients and Adam's moments stay float32. bfloat16 has
float32's exponent, so no loss scaling is needed. What is summed stays float32: the canvas c_t,
the KL of eq. 11 (DrawModel.forward) and the reconstruction term of eq. 9.

Evaluation is float32 whatever the run trains in (MainLoop.step is the one place autocast is
entered), so a run's bounds are its float32 parameters', comparable across precisions.

Apart from that, `--matmul-precision` is PyTorch's `torch.set_float32_matmul_precision` for the
training step's float32 products (forward and backward): "highest" computes them in float32.
On a CPU with AMX, "medium" lets oneDNN round their inputs to bfloat16 inside the product
kernel ("bf32"), with float32 sums and everything else float32, so no cast runs between
operations as under autocast. Not every CPU that computes bfloat16 does it: an AMD EPYC with
AVX512-BF16 and no AMX keeps float32 products at "medium" (`medium_rounds` asks the CPU). On
CUDA, "high" and "medium" both allow TF32; on most CPUs "high" is float32.
"""
import contextlib
from collections.abc import Iterator

import torch

from draw.errors import DrawError

PRECISIONS = ("32", "bf16-mixed")
DEFAULT = "32"
MATMUL_PRECISIONS = ("highest", "high", "medium")       # torch.set_float32_matmul_precision's
MATMUL_DEFAULT = "highest"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a training forward pass runs in: nothing for "32", bfloat16 autocast on
    `device`'s type for "bf16-mixed"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def check_matmul_precision(name: str) -> None:
    """ValueError for a name torch.set_float32_matmul_precision does not take."""
    if name not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)}, "
                         f"got {name!r}")


def float32_matmul(name: str) -> contextlib.AbstractContextManager:
    """float32 products at `name` (torch.set_float32_matmul_precision) inside the context, as
    before it after: the training step's, not evaluation's. At the default, nothing: a run
    that did not ask for it leaves torch's global setting alone."""
    check_matmul_precision(name)
    return contextlib.nullcontext() if name == MATMUL_DEFAULT else _matmul_at(name)


@contextlib.contextmanager
def _matmul_at(name: str) -> Iterator[None]:
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(name)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def matmul_choice(name: str, device: torch.device) -> str:
    """`--matmul-precision` in words for a run's header."""
    if name == "highest":
        return "highest (float32 products)"
    if name == "medium" and device.type == "cpu":
        return ("medium: the training step's float32 products take bfloat16 inputs, float32 "
                "sums; evaluation float32" if medium_rounds() else
                "medium, but this CPU's float32 products stay float32 at it")
    if device.type == "cuda":
        return f"{name}: TF32 products in the training step where the GPU has them"
    return f"{name} (torch.set_float32_matmul_precision) in the training step"


def medium_rounds() -> bool:
    """Whether float32 products on the CPU take bfloat16 inputs at "medium": asked of the CPU
    by a product whose inputs bfloat16 cannot hold (1 + 2^-10, exact in float32, is 1 in
    bfloat16), 64 x 64 x 64, large enough for oneDNN's kernels."""
    a = torch.full((64, 64), 1 + 2 ** -10)
    with _matmul_at("medium"):
        product = a @ torch.eye(64)
    return not torch.equal(product, a)


def bf16_hardware(device: torch.device) -> str | None:
    """What computes bfloat16 natively on `device` (AMX or AVX512-BF16 on a CPU, bfloat16
    tensor cores on a GPU), in words, or None where it is emulated, usually slower than float32."""
    if device.type == "cpu":
        # torch's own CPUID checks; public torch has none (pinned torch 2.13)
        if torch.cpu._is_amx_tile_supported():
            return "AMX"
        if torch.cpu._is_avx512_bf16_supported():
            return "AVX512-BF16"
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.cuda.get_device_name(device)
    return None


def precision_choice(precision: str, device: torch.device) -> tuple[str, str]:
    """The precision a run trains in and why, in words for its header; DrawError for another
    name, or bf16-mixed on a device other than a CPU or a CUDA GPU."""
    if precision not in PRECISIONS:
        raise DrawError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    hardware = bf16_hardware(device)
    if precision == "32":
        return precision, ("32 (float32; bf16-mixed is opt-in, its bound and speed: "
                           "doc/development.md)")
    if device.type not in ("cpu", "cuda"):
        raise DrawError(f"--precision bf16-mixed trains on a CPU or a CUDA GPU, not on "
                        f"{device.type}")
    kind = "CPU" if device.type == "cpu" else "GPU"
    native = (f"this {kind} computes bfloat16 natively ({hardware})" if hardware is not None
              else f"this {kind} has no native bfloat16: emulated, likely slower than 32")
    return precision, (f"bf16-mixed (--precision): bfloat16 products under autocast, float32 "
                       f"weights, Adam and sums, float32 evaluation; {native}")
