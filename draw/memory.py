"""Memory estimates, checked before allocating: a request that cannot fit is one line, not a crash.

A flag or a model file can ask for sizes no machine holds (`--enc-dim 100000000`, 60000 x 60000
images); allocating first ends in a late RuntimeError or the OOM killer, estimating first in
"needs about N GB, this machine has M GB" at once. The float32 estimates cover DRAW's and the
classifier's configs: `parameter_count` is exact (a model built on the meta device),
`activation_bytes` fits what autograd saves (tests hold it within a factor of 1.5).
"""
import os

import torch

from draw.classifier import AttentionClassifier, ClassifierConfig
from draw.errors import DrawError
from draw.model import DrawConfig, DrawModel

GB = 1024 ** 3

ModelConfig = DrawConfig | ClassifierConfig


class ResourceError(DrawError):
    """A request that needs more memory than the machine has."""


def describe_sizes(cfg: ModelConfig) -> str:
    """The sizes of `cfg` that make a model large, in words."""
    image = f"{cfg.channels}x{cfg.height}x{cfg.width} images"
    if isinstance(cfg, ClassifierConfig):
        return f"{image}, read {cfg.read_N}x{cfg.read_N}, LSTM {cfg.enc_dim}"
    windows = "".join(f", {which}_N {N}" for which, N in (("read", cfg.read_N),
                                                           ("write", cfg.write_N))
                      if N is not None)
    return f"{image}, enc {cfg.enc_dim}, dec {cfg.dec_dim}, z {cfg.z_dim}{windows}"


def parameter_count(cfg: ModelConfig) -> int:
    """The exact number of parameters of the model of `cfg`, built on the meta device (shapes
    without memory, so a config of any size is counted at once). ResourceError where a weight
    has more entries than torch can address (about 2^63 bytes)."""
    build = (AttentionClassifier if isinstance(cfg, ClassifierConfig) else DrawModel).from_config
    try:
        with torch.device("meta"):
            model = build(cfg)
    # a size past 64 bits is a TypeError ("Overflow when unpacking long long"), a weight
    # whose byte count is past them a RuntimeError ("Storage size calculation overflowed")
    except (RuntimeError, TypeError, OverflowError) as e:
        raise ResourceError(f"a model of these sizes ({describe_sizes(cfg)}) is too large to "
                            f"build: no machine has the memory for its weights") from e
    return sum(p.numel() for p in model.parameters())


def parameter_bytes(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the model's parameters."""
    return parameter_count(cfg) * dtype.itemsize


def step_floats(cfg: ModelConfig) -> int:
    """Numbers one drawing step (or glimpse) keeps per image while autograd records it: a
    least-squares fit, rounded up, to what `saved_tensors_hooks` sees on random configs. DRAW:
    4 per pixel, 7 per encoder and 11 per decoder unit, 5 per latent, and per window its
    filterbanks and half-filtered image (eqs. 27, 29); the classifier: 6 per filterbank entry,
    2 per half-filtered entry, 1 per glimpse value, 9 per LSTM unit."""
    C, H, W = cfg.channels, cfg.height, cfg.width
    if isinstance(cfg, ClassifierConfig):
        N = cfg.read_N
        return 6 * N * (H + W) + 2 * C * N * W + C * N * N + 9 * cfg.enc_dim
    floats = 4 * cfg.x_dim + 7 * cfg.enc_dim + 11 * cfg.dec_dim + 5 * cfg.z_dim
    if cfg.read_N is not None:
        N = cfg.read_N
        floats += 2 * (2 * C * N * N + 2 * C * N * W + N * (H + W))
    if cfg.write_N is not None:
        N = cfg.write_N
        floats += 3 * (C * N * N + C * N * W + N * (H + W))
    return floats


def activation_bytes(cfg: ModelConfig, batch: int, grad: bool = True,
                     dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the intermediate results of one forward pass over `batch` images (or
    image-sample pairs): all n_iter steps' when autograd records it (`grad`), else one step's."""
    steps = cfg.n_iter if grad else 1
    # the image, once; a classifier's glimpse of several channels copies it (their reshape
    # for the filterbank products is no view)
    images = steps if isinstance(cfg, ClassifierConfig) and cfg.channels > 1 else 1
    return batch * (steps * step_floats(cfg) + images * cfg.x_dim) * dtype.itemsize


def training_bytes(cfg: ModelConfig, batch: int) -> int:
    """Bytes to train with Adam on `batch` images: the parameters four times (weights, gradients
    and Adam's two moment estimates) and the recorded forward pass."""
    return 4 * parameter_bytes(cfg) + activation_bytes(cfg, batch, grad=True)


def inference_bytes(cfg: ModelConfig, batch: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes to build the model and run it without autograd on `batch` images (or pairs):
    parameters, one step's intermediates, and what DRAW keeps of every step all the same (u, z,
    mean, log sigma and the KL: memory grows with n_iter); the classifier keeps only its state."""
    per_step = 0 if isinstance(cfg, ClassifierConfig) else 4 * cfg.z_dim + 1
    return (parameter_bytes(cfg, dtype) + activation_bytes(cfg, batch, grad=False, dtype=dtype)
            + batch * cfg.n_iter * per_step * dtype.itemsize)


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes that can be allocated now: free GPU memory, else the kernel's MemAvailable, else
    (no /proc/meminfo: macOS, the BSDs) all physical RAM."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024                         # kB
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def format_gb(n_bytes: int) -> str:
    """1.5e9 -> "1.4 GB"; 3e14 -> "279,397 GB" (GB = 2^30 bytes)."""
    gb = n_bytes / GB
    return f"{gb:,.1f} GB" if gb < 100 else f"{gb:,.0f} GB"


def check_memory(needed: int, what: str, device: torch.device | str | None = None) -> None:
    """ResourceError when `needed` bytes exceed what `device` (default the CPU) has free;
    `what` names the request ("sampling 1,000,000,000 images")."""
    have = available_memory(device)
    if needed > have:
        where = "this machine" if device is None or torch.device(device).type == "cpu" else str(device)
        raise ResourceError(f"{what} needs about {format_gb(needed)} of memory, {where} has "
                            f"{format_gb(have)} available")


def check_inference(cfg: ModelConfig, batch: int, what: str,
                    device: torch.device | str | None = None, extra: int = 0) -> None:
    """The one check of a model file's config before its model is built to run without
    autograd: the model, a pass over `batch` images and `extra` bytes must fit `device`."""
    check_memory(inference_bytes(cfg, batch) + extra, what, device)
