"""Evaluate a trained model: the bound of eq. 12, and an importance-sampled estimate of -log p(x).

The bound L = L^x + L^z (eq. 12) is what training minimises and what the paper reports. It is
an upper bound on -log p(x); the gap is KL(q(z|x) || p(z|x)). The importance-sampled estimate
(Burda, Grosse and Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016)

    -log p(x) ~= -log (1/K) sum_k p(x, z_k) / q(z_k | x),    z_k ~ q(z | x),

is again an upper bound in expectation, never looser than the bound, and it tightens to
-log p(x) as K grows. Per image it is at most the mean of -log w_k over the same K samples
(Jensen's inequality), which itself is an unbiased estimate of the bound.

Its cost is K forward passes per image: `evaluate.py` (whose flags this module's `main` takes)
times the first images and says how long the rest will take before the wait gets long.
"""
import math
import time
from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from draw.checkpoint import load_model, model_file_config, resolve_device
from draw.classifier import ClassifierConfig
from draw.datasets import batches, get_data, supported_datasets
from draw.errors import DrawError
from draw.memory import check_inference
from draw.model import DrawModel, nll_bound
from draw.training.distributed import Distributed

# K: the bound of eq. 12, the number the paper reports, does not depend on it; K = 10 gives about
# half the tightening of K = 1000 (7.2 of 13.0 nats on a T = 8 model) for 1/100 of its time
DEFAULT_SAMPLES = 10
# (image, sample) rows per pass through the model: enough for efficient matrix products (a row
# costs 1.6x more in passes of 400), few enough that the progress bar moves every few seconds
# on a CPU at T = 64
MAX_ROWS = 1000
# an expected time longer than this (seconds) is printed before the wait
LONG = 60.0
# the bound's pass costs about this many importance samples per image (it runs in smaller
# batches, which use the CPU less well)
BOUND_COST = 3


@torch.no_grad()
def bound_statistics(forward: Callable, model: DrawModel, data: Iterable[Tensor],
                     generator: torch.Generator,
                     dist: Distributed | None = None) -> tuple[float, list[float]]:
    """The bound (eq. 12) and each step's KL term (eq. 11), averaged over all images of `data`.

    Parameters
    ----------
    forward : callable
        `model` itself or a faster callable with its signature (x, u) -> (c, kl).
    model : DrawModel
        Put in eval mode for the evaluation and back in its previous mode after.
    data : iterable of Tensor, each (B, x_dim) on the model's device
    generator : torch.Generator
        On the model's device; the source of the posterior noise u.
    dist : Distributed, optional
        Under torchrun, every rank passes the same `data` and `generator`, evaluates its slice
        of each batch (with its slice of the batch's noise) and gets the averages over all of
        them, the same numbers as one process would compute, up to float rounding.

    Returns
    -------
    nll_bound : float, nats per image
    kl_terms : list of n_iter floats, nats per image
    """
    dist = dist or Distributed()
    was_training = model.training
    model.eval()
    # [sum of bounds, number of images, sum of KL_t for every t], in float64
    sums = torch.zeros(2 + model.n_iter, dtype=torch.float64,
                       device=next(model.parameters()).device)
    try:
        for x in data:
            u = model.noise(x.shape[0], like=x, generator=generator)           # (T, B, Z)
            x, u = dist.shard(x), dist.shard(u, dim=1)                        # (b, D), (T, b, Z)
            if x.shape[0] == 0:
                continue        # a rank's empty slice of a batch smaller than the world
            c, kl = forward(x, u)                                             # (b, D), (T, b)
            sums[0] += nll_bound(x, c, kl).double().sum()
            sums[1] += x.shape[0]
            sums[2:] += kl.double().sum(dim=1)                                # (T,)
    finally:
        model.train(was_training)
    sums = dist.all_reduce_sum(sums)
    count = sums[1].item()
    if count == 0:
        raise ValueError("bound_statistics needs at least one image")
    return sums[0].item() / count, (sums[2:] / count).tolist()


@torch.no_grad()
def importance_sampled_nll(model: DrawModel, data: Iterable[Tensor], samples: int,
                           generator: torch.Generator, max_rows: int = MAX_ROWS,
                           progress: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor]:
    """Importance-sampled -log p(x) with K = `samples` posterior samples, per image.

    Parameters
    ----------
    model : DrawModel
    data : iterable of Tensor, each (B, x_dim) on the model's device
    samples : int
        K, the number of posterior samples per image.
    generator : torch.Generator
        On the model's device; the source of the posterior noise.
    max_rows : int
        At most this many (image, sample) pairs go through the model at once; it bounds memory.
    progress : callable, optional
        Called with the number of images just finished after every pass through the model.

    Returns
    -------
    nll : Tensor, shape (N,), float64, CPU
        -log (1/K) sum_k w_k, nats per image.
    bound : Tensor, shape (N,), float64, CPU
        -(1/K) sum_k log w_k over the same samples: a K-sample estimate of the bound, >= nll.
    """
    if samples < 1:
        raise ValueError(f"the number of importance samples must be at least 1, got {samples}")
    was_training = model.training
    model.eval()
    nll, bound = [], []
    try:
        for x in data:
            for chunk in x.split(max(1, max_rows // samples)):                # (b, D)
                rows = chunk.repeat_interleave(samples, dim=0)                # (b*K, D)
                u = model.noise(rows.shape[0], like=rows, generator=generator)  # (T, bK, Z)
                log_w = model.log_weight(rows, u).double().view(-1, samples)  # (b, K)
                nll.append(-(torch.logsumexp(log_w, dim=1) - math.log(samples)).cpu())
                bound.append(-log_w.mean(dim=1).cpu())
                if progress is not None:
                    progress(chunk.shape[0])
    finally:
        model.train(was_training)
    return torch.cat(nll), torch.cat(bound)


def duration(seconds: float) -> str:
    """90 -> "1 min 30 s"; 5400 -> "1 h 30 min"."""
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {s} s" if minutes else f"{s} s"


def classifier_main(model_file: str, cfg: ClassifierConfig, data_dir: str | None,
                    device: torch.device) -> dict:
    """evaluate.py on a classifier's model file (train-classifier.py): its error on the whole
    test split, in percent (--split, --subset and --samples are DRAW's and not used). Its
    config is checked first, as a DRAW model's: its glimpses as train-classifier.py checks
    them, then the memory of its passes over TEST_BATCH images."""
    # imported here, not above: draw.training.classify imports the extensions, which import
    # this module
    from draw.training.classify import TEST_BATCH, GlimpseCheckpoint, classifier_test_error
    GlimpseCheckpoint.needs(cfg, f"{model_file} has {cfg.n_iter:,} glimpses, more than "
                                 f"train-classifier.py trains: their glimpses.png")
    check_inference(cfg, TEST_BATCH, f"evaluating {model_file} ({TEST_BATCH} "
                                           f"images at once)", device)
    error = classifier_test_error(model_file, data_dir=data_dir, device=device)
    print(f"{model_file}: a classifier")
    print(f"  {'test error:':<36}{error:9.2f} %")
    return {"test_error": error}


def main(model_file: str, dataset: str | None = None, split: str = "test",
         samples: int = DEFAULT_SAMPLES, batch_size: int = 100, subset: int | None = None,
         seed: int = 0, device: str = "auto", data_dir: str | None = None) -> dict:
    """evaluate.py: load a model file, evaluate it on a split, print and return the numbers.

    The model's sizes are checked against the device's memory before it is built; the
    importance-sampled pass shows a progress bar, and when it will take longer than LONG
    seconds, its expected time, measured on its first images, is printed first.

    Returns
    -------
    dict with "nll_bound" (eq. 12, analytic KL), "is_nll" (importance-sampled, K = samples),
    "is_bound" (the K-sample estimate of the bound), "images", "samples".
    """
    for flag, value in (("--samples", samples), ("--bs", batch_size), ("--subset", subset)):
        if value is not None and value < 1:
            raise DrawError(f"{flag} must be a positive integer, got {value}")
    if split not in ("train", "valid", "test"):
        raise DrawError(f"--split must be train, valid or test, got {split!r}")
    dev = resolve_device(device)
    cfg = model_file_config(model_file, classifier=True)
    if isinstance(cfg, ClassifierConfig):
        return classifier_main(model_file, cfg, data_dir, dev)
    # the model alone first, before it is built; the passes once the data say how many images
    check_inference(cfg, 1, f"the model of {model_file}", dev)
    net, ckpt = load_model(model_file, map_location=dev)
    run = ckpt.get("run") or {}
    dataset = dataset or run.get("dataset")
    if dataset is None:
        raise DrawError(f"{model_file} does not say which dataset it was trained on; pass --dataset")
    if dataset not in supported_datasets:
        raise DrawError(f"unknown dataset {dataset!r}; choose from {', '.join(supported_datasets)}")
    data = get_data(dataset, root=data_dir)
    if tuple(data.shape) != (cfg.channels, cfg.height, cfg.width):
        raise DrawError(f"{model_file} models {cfg.channels}x{cfg.height}x{cfg.width} images, but "
                        f"{dataset} has {'x'.join(map(str, data.shape))}")
    images = getattr(data, split)
    if subset is not None and subset < images.shape[0]:
        # a random subset: some splits are sorted by class (binarized MNIST's test set)
        pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
        images = images[pick[:subset]]
    N = images.shape[0]
    # the largest pass: a batch of the bound, or the (image, sample) rows importance sampling
    # takes at once (one image's K rows when K alone exceeds MAX_ROWS)
    rows = max(min(batch_size, N), min(max(MAX_ROWS, samples), N * samples))
    check_inference(cfg, rows, f"evaluating {model_file} ({rows:,} images or samples at once)",
                    dev)

    def stream():
        return batches(images, batch_size, device=dev)

    generator = torch.Generator(device=dev)
    with tqdm(total=N, desc=f"importance sampling, K={samples}", unit="image",
              dynamic_ncols=True) as bar:
        start = time.perf_counter()

        def progress(done: int) -> None:
            bar.update(done)
            if bar.n == done:                       # the first pass: time it, say what is ahead
                per_image = (time.perf_counter() - start) / done
                expected = per_image * N * (1 + BOUND_COST / samples)
                if expected > LONG:
                    tqdm.write(f"expected time: about {duration(expected)} for {N:,} images at "
                               f"K={samples} ({per_image:.2g} s an image, timed on the first "
                               f"{done}); --samples and --subset make it shorter")

        is_nll, is_bound = importance_sampled_nll(net, stream(), samples,
                                                  generator.manual_seed(seed), max_rows=MAX_ROWS,
                                                  progress=progress)
    batches_total = math.ceil(N / batch_size)
    bound, _ = bound_statistics(net, net, tqdm(stream(), total=batches_total, desc="bound",
                                               unit="batch", leave=False, dynamic_ncols=True),
                                generator.manual_seed(seed))
    result = {"nll_bound": bound, "is_nll": is_nll.mean().item(),
              "is_bound": is_bound.mean().item(), "images": N, "samples": samples}
    gap = result["nll_bound"] - result["is_nll"]
    print(f"{model_file}: epoch {ckpt['epoch']}, {dataset} {split} set, {N} images")
    if data.binary:
        print(f"  {'nll bound (eq. 12):':<36}{result['nll_bound']:9.2f} nats")
        print(f"  {f'importance-sampled nll, K={samples}:':<36}{result['is_nll']:9.2f} nats "
              f"({gap:.2f} below the bound)")
    else:
        # the Bernoulli likelihood of grey levels is no probability of the image: eq. 12 is
        # then the training objective, not a bound on -log p(x) (the keys stay for old callers)
        print(f"  {'objective (eq. 12, grey levels):':<36}{result['nll_bound']:9.2f} nats "
              f"(Bernoulli cross-entropy + KL; not a bound on -log p(x))")
        print(f"  {f'importance-sampled, K={samples}:':<36}{result['is_nll']:9.2f} nats "
              f"({gap:.2f} below the objective)")
    return result
