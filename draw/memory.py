"""Memory estimates, checked before allocating: a request that cannot fit is one line, not a crash.

A model file or a flag can ask for sizes no machine holds (`--enc-dim 100000000`, a config that
claims 60000 x 60000 images, `sample.py --n-samples 1000000000`). Allocating first ends in
PyTorch's `RuntimeError: ... can't allocate memory` after a long wait, or in the kernel's OOM
killer; estimating first gives "needs about N GB, this machine has M GB" at once.

    check_memory(parameter_bytes(cfg) + activation_bytes(cfg, batch=100, grad=False),
                 "evaluating this model")

The estimates are for float32 and are meant to be right within a small factor, not exact:
`parameter_count` is exact (it counts the model built on the meta device); `activation_bytes`
follows what autograd saves for the backward pass, measured on many configurations (tests hold
it within a factor of 1.5 of the measured bytes). They cover both kinds of model, DRAW's
(DrawConfig) and the attention classifier's (ClassifierConfig), so that train-draw.py and
train-classifier.py check a run alike (draw/training/run.py, `check_run_sizes`), and sample.py
and evaluate.py a model file alike (`check_inference`).
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


def parameter_count(cfg: ModelConfig) -> int:
    """The exact number of parameters of DrawModel.from_config(cfg) (or of
    AttentionClassifier.from_config(cfg) for a ClassifierConfig), counted on the model built
    on the meta device: shapes without memory, so a config of any size is counted at once."""
    build = (AttentionClassifier if isinstance(cfg, ClassifierConfig) else DrawModel).from_config
    with torch.device("meta"):
        model = build(cfg)
    return sum(p.numel() for p in model.parameters())


def parameter_bytes(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the model's parameters."""
    return parameter_count(cfg) * dtype.itemsize


def step_floats(cfg: ModelConfig) -> int:
    """Numbers one drawing step (or glimpse) keeps per image while autograd records it.

    A least-squares fit to the bytes that `torch.autograd.graph.saved_tensors_hooks` sees on 24
    random configurations, rounded up: about 4 per pixel (canvas, its sigmoid, the error image,
    the loss), 7 per encoder and 11 per decoder unit (LSTM gates, cell states, the inputs of the
    matrix products), 5 per latent (mean, log sigma, noise, sample), and per attention window
    its filterbanks and the half-filtered image between the two products (eqs. 27, 29).
    A classifier's glimpse, fitted the same way on 30: 6 per filterbank entry, 2 per entry of
    the half-filtered image, 1 per glimpse value, 9 per LSTM unit (and the image, see
    `activation_bytes`).
    """
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
    """Bytes of the intermediate results of one forward pass over `batch` images.

    Parameters
    ----------
    cfg : DrawConfig or ClassifierConfig
    batch : int
        Images (or, for importance sampling, image-sample pairs) per pass.
    grad : bool
        True when autograd records the pass for training: every one of the n_iter steps is kept.
        False under torch.no_grad() (evaluation, sampling): one step's worth at a time, plus the
        canvas.
    """
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
    """Bytes to build the model and run it without autograd on `batch` images (or image-sample
    pairs): the parameters, one step's intermediate results, and what a pass keeps of every
    step all the same. For DRAW that is the noise u and z, its posterior's mean and log sigma,
    (n_iter, batch, z_dim) each, and the KL terms (n_iter, batch): memory grows with n_iter
    even without autograd. The classifier keeps nothing of a glimpse but its state."""
    per_step = 0 if isinstance(cfg, ClassifierConfig) else 4 * cfg.z_dim + 1
    return (parameter_bytes(cfg, dtype) + activation_bytes(cfg, batch, grad=False, dtype=dtype)
            + batch * cfg.n_iter * per_step * dtype.itemsize)


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes that can be allocated now: free GPU memory for a CUDA device, otherwise the
    kernel's MemAvailable (free RAM plus reclaimable caches), or all physical RAM where
    /proc/meminfo does not exist (macOS, the BSDs)."""
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
    """Raise ResourceError when `needed` bytes exceed what `device` (default the CPU) has free.

    Parameters
    ----------
    needed : int
        Estimated bytes.
    what : str
        The request, for the message: "sampling 1,000,000,000 images".
    """
    have = available_memory(device)
    if needed > have:
        where = "this machine" if device is None or torch.device(device).type == "cpu" else str(device)
        raise ResourceError(f"{what} needs about {format_gb(needed)} of memory, {where} has "
                            f"{format_gb(have)} available")


def check_inference(cfg: ModelConfig, batch: int, what: str,
                    device: torch.device | str | None = None, extra: int = 0) -> None:
    """The one check of a model file's config before its model is built to be run without
    autograd, DRAW's or a classifier's alike (sample.py, evaluate.py): the model and a pass over
    `batch` images, and `extra` bytes the caller keeps besides (samples, pictures), must fit
    `device`'s memory. ResourceError, one line, naming `what` ("evaluating FILE ...")."""
    check_memory(inference_bytes(cfg, batch) + extra, what, device)
