"""evaluate.py: the numbers of a model file on a dataset's split.

A DRAW model's: the bound of eq. 12 and an importance-sampled estimate of -log p(x)
(draw/likelihood.py). Its cost is K forward passes per image: `main` times the first images and
says how long the rest will take before the wait gets long. A classifier's: its error on the
whole test split (section 4.1, Table 1).

The model file is read once; its config is checked against the device's memory before its model
is built (a file can claim sizes no machine holds).
"""
import time

import torch
from tqdm.auto import tqdm

from draw.checkpoint import (CheckpointError, build_classifier, build_model, file_config,
                             load_checkpoint, load_classifier, resolve_device)
from draw.classifier import ClassifierConfig, errors
from draw.datasets import batches, get_data, get_labelled, labelled_batches, supported_datasets
from draw.datasets.store import dataset_spec
from draw.errors import DrawError
from draw.likelihood import MAX_ROWS, bound_statistics, importance_sampled_nll
from draw.memory import check_inference
from draw.outputs.glimpses import glimpses_bytes

# K: the bound of eq. 12, the paper's number, does not depend on it; 10 is cheap and tightens
# about half as much as 1000 (doc/development.md)
DEFAULT_SAMPLES = 10
# an expected time longer than this (seconds) is printed before the wait
LONG = 60.0
# the bound's pass costs about this many importance samples per image (it runs in smaller
# batches, which use the CPU less well)
BOUND_COST = 3
TEST_BATCH = 500         # images per pass of classifier_test_error


def duration(seconds: float) -> str:
    """90 -> "1 min 30 s"; 5400 -> "1 h 30 min"."""
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {s} s" if minutes else f"{s} s"


def classifier_test_error(path, data_dir: str | None = None, batch_size: int = TEST_BATCH,
                          device: str | torch.device = "cpu") -> float:
    """The test error, in percent, of the classifier saved in `path`, on the test split of the
    dataset it was trained on (for cluttered-mnist the fixed 10,000 test images). Raises
    CheckpointError for a file that is not a classifier's, DatasetError for missing data."""
    model, ckpt = load_classifier(path, device)
    return _test_error(model, ckpt, path, data_dir, batch_size, device)


@torch.no_grad()
def _test_error(model, ckpt: dict, path, data_dir: str | None, batch_size: int,
                device: str | torch.device) -> float:
    run = ckpt.get("run")
    if not isinstance(run, dict) or not isinstance(run.get("dataset"), str):
        raise CheckpointError(f"{path} does not say which dataset it was trained on")
    data = get_labelled(run["dataset"], root=data_dir)
    was_training = model.training
    model.eval()
    try:
        wrong = sum(errors(model(x), y).sum().item()
                    for x, y in labelled_batches(data.test, batch_size, device=device))
    finally:
        model.train(was_training)
    return 100 * wrong / len(data.test)


def classifier_main(model_file: str, ckpt: dict, cfg: ClassifierConfig, data_dir: str | None,
                    device: torch.device) -> dict:
    """evaluate.py on a classifier's model file: its error on the whole test split, in percent
    (--split, --subset and --samples are DRAW's). Its config is checked first: its glimpses
    as train-classifier.py checks them, then the memory of passes over TEST_BATCH images."""
    glimpses_bytes(cfg, f"{model_file} has {cfg.n_iter:,} glimpses, more than "
                        f"train-classifier.py trains: their glimpses.png")
    check_inference(cfg, TEST_BATCH, f"evaluating {model_file} ({TEST_BATCH} images at once)",
                    device)
    model = build_classifier(ckpt, model_file, device)
    error = _test_error(model, ckpt, model_file, data_dir, TEST_BATCH, device)
    print(f"{model_file}: a classifier")
    print(f"  {'test error:':<36}{error:9.2f} %")
    return {"test_error": error}


def model_dataset(model_file: str, cfg, dataset: str | None, run: dict) -> str:
    """The dataset to evaluate on: `dataset` (--dataset), else the one the model was trained
    on. Its image shape is the registry's, checked against the model's before a file is read
    or downloaded (a mismatch found after loading cost the download or the load)."""
    dataset = dataset or run.get("dataset")
    if dataset is None:
        raise DrawError(f"{model_file} does not say which dataset it was trained on; pass "
                        f"--dataset")
    if dataset not in supported_datasets:
        raise DrawError(f"unknown dataset {dataset!r}; choose from {', '.join(supported_datasets)}")
    shape = dataset_spec(dataset).shape
    if tuple(shape) != (cfg.channels, cfg.height, cfg.width):
        raise DrawError(f"{model_file} models {cfg.channels}x{cfg.height}x{cfg.width} images, but "
                        f"{dataset} has {'x'.join(map(str, shape))}")
    return dataset


def model_images(model_file: str, cfg, dataset: str | None, run: dict, split: str,
                 subset: int | None, seed: int, data_dir: str | None):
    """The split's images (a random --subset of them), and whether the data are binary."""
    dataset = model_dataset(model_file, cfg, dataset, run)
    data = get_data(dataset, root=data_dir)
    images = getattr(data, split)
    if subset is not None and subset < images.shape[0]:
        # a random subset: some splits are sorted by class (binarized MNIST's test set)
        pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
        images = images[pick[:subset]]
    return dataset, images, data.binary


def _importance_sampled(net, images, batch_size: int, samples: int, seed: int,
                        device: torch.device) -> tuple[float, float]:
    """The mean importance-sampled -log p(x) and K-sample bound, with a progress bar, and the
    expected time printed after the first pass when it is longer than LONG."""
    N = images.shape[0]
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

        generator = torch.Generator(device=device).manual_seed(seed)
        is_nll, is_bound = importance_sampled_nll(net, batches(images, batch_size, device=device),
                                                  samples, generator, max_rows=MAX_ROWS,
                                                  progress=progress)
    return is_nll.mean().item(), is_bound.mean().item()


def _report(model_file: str, ckpt: dict, dataset: str, split: str, binary: bool,
            result: dict) -> None:
    gap, samples = result["nll_bound"] - result["is_nll"], result["samples"]
    before = ckpt.get("started_from")
    # a continuation (--oldmodel) counts its epochs from 0: the model's are the sum
    epochs = (f"epoch {ckpt['epoch']} + {before['epochs']} before (started from "
              f"{before['file']})" if before else f"epoch {ckpt['epoch']}")
    print(f"{model_file}: {epochs}, {dataset} {split} set, {result['images']} images")
    if binary:
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


def main(model_file: str, dataset: str | None = None, split: str = "test",
         samples: int = DEFAULT_SAMPLES, batch_size: int = 100, subset: int | None = None,
         seed: int = 0, device: str = "auto", data_dir: str | None = None,
         threads: int | None = None) -> dict:
    """evaluate.py: load a model file, evaluate it on a split, print and return the numbers:
    "nll_bound" (eq. 12, analytic KL), "is_nll" (importance-sampled, K = samples), "is_bound"
    (the K-sample estimate of the bound), "images", "samples"; for a classifier "test_error".
    `threads`: torch's CPU threads for this process (None: torch's choice)."""
    for flag, value in (("--samples", samples), ("--bs", batch_size), ("--subset", subset),
                        ("--threads", threads)):
        if value is not None and value < 1:
            raise DrawError(f"{flag} must be a positive integer, got {value}")
    if threads is not None:
        torch.set_num_threads(threads)
    if split not in ("train", "valid", "test"):
        raise DrawError(f"--split must be train, valid or test, got {split!r}")
    dev = resolve_device(device)
    ckpt = load_checkpoint(model_file)
    cfg = file_config(ckpt, model_file, classifier=True)
    if isinstance(cfg, ClassifierConfig):
        given = [flag for flag, value, default in (
            ("--dataset", dataset, None), ("--split", split, "test"),
            ("--samples", samples, DEFAULT_SAMPLES), ("--bs", batch_size, 100),
            ("--subset", subset, None), ("--seed", seed, 0)) if value != default]
        if given:
            raise DrawError(f"{', '.join(given)}: not for a classifier's model file, whose error "
                            f"is on the whole test split of its own dataset")
        return classifier_main(model_file, ckpt, cfg, data_dir, dev)
    # the dataset's shape and the model alone first, before either is loaded or built; the
    # passes once the data say how many images
    model_dataset(model_file, cfg, dataset, ckpt.get("run") or {})
    check_inference(cfg, 1, f"the model of {model_file}", dev)
    net = build_model(ckpt, model_file, dev)
    dataset, images, binary = model_images(model_file, cfg, dataset, ckpt.get("run") or {}, split,
                                           subset, seed, data_dir)
    N = images.shape[0]
    # the largest pass: a batch of the bound, or the (image, sample) rows importance sampling
    # takes at once (one image's K rows when K alone exceeds MAX_ROWS)
    rows = max(min(batch_size, N), min(max(MAX_ROWS, samples), N * samples))
    check_inference(cfg, rows, f"evaluating {model_file} ({rows:,} images or samples at once)",
                    dev)
    is_nll, is_bound = _importance_sampled(net, images, batch_size, samples, seed, dev)
    stream = tqdm(batches(images, batch_size, device=dev), total=-(-N // batch_size),
                  desc="bound", unit="batch", leave=False, dynamic_ncols=True)
    bound, _ = bound_statistics(net, net, stream,
                                torch.Generator(device=dev).manual_seed(seed))
    result = {"nll_bound": bound, "is_nll": is_nll, "is_bound": is_bound, "images": N,
              "samples": samples}
    _report(model_file, ckpt, dataset, split, binary, result)
    return result
