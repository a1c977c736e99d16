"""Model quality at a fixed budget: DRAW on binarized MNIST, with and without attention.

The protocol of issue 8, so that initialisation and parameterisation choices can be compared on
equal terms: T=16 glimpses, read 2x2 / write 5x5 (attention run) or whole image (plain run),
encoder and decoder LSTMs of 256, z of 100, 2000 Adam steps of batch 100 (4 epochs of the 50,000
training images), learning rate 1e-3, gradient norm clipped at 10, loss = the bound of eq. 12
averaged over the batch. It reports the bound on the whole validation split (10,000 images) and
never evaluates on the test split, so tuning against it leaves the test numbers honest.

`--precision 32 bf16-mixed` trains each model once per precision (draw/precision.py) from the
same seed: the same initialisation, batches and noise, the training step's forward pass in
float32 or under bfloat16 autocast; the validation bound is float32 either way, as in a run.
`--matmul-precision highest medium` does the same for train-draw.py's --matmul-precision
(the training step's float32 products with bfloat16 inputs at "medium").

Usage (from the repository root; the data as converted by `python -m draw.datasets convert
bmnist --from DIR`)::

    python bench/quality.py --data-dir DATA --threads 1   # both runs, 10-15 min each on 2 CPU cores
    python bench/quality.py --runs attention --steps 400 --seed 2
    python bench/quality.py --runs attention --precision 32 bf16-mixed --threads 1
    python bench/quality.py --runs attention --matmul-precision highest medium --threads 1

The model is `DrawModel.from_config`, initialised as draw/model.py does; the numbers this
benchmark measured for each initialisation choice are in the README's "Model quality" section.
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from draw.atomic import atomic_write_bytes
from draw.cli import ArgumentParser, positive, run
from draw.datasets import batches, get_data
from draw.errors import DrawError
from draw.model import DrawConfig, DrawModel, nll_bound
from draw.precision import MATMUL_PRECISIONS, PRECISIONS
from draw.training.main_loop import MainLoop
from draw.training.settings import parse_attention
from draw.training.task import DrawTask

RUNS = ("attention", "plain")
EVAL_BATCH = 1000     # images per forward pass when evaluating; the bound does not depend on it


def positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def window_sizes(text: str) -> tuple[int, int]:
    """--attention as train-draw.py parses it; the attention run needs both windows."""
    try:
        read_N, write_N = parse_attention(text)
    except DrawError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if read_N is None:
        raise argparse.ArgumentTypeError("expected READ,WRITE such as 2,5")
    return read_N, write_N


def output_file(text: str) -> str:
    """A path whose directory exists, checked before hours of training rather than after."""
    if not Path(text).expanduser().parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory of {text} does not exist")
    return text


@torch.no_grad()
def valid_bound(model: DrawModel, images: torch.Tensor, device: torch.device,
                seed: int) -> tuple[float, float]:
    """The bound (eq. 12) and its KL part (eq. 11), in nats per image, averaged over `images`;
    one posterior sample per image, drawn from a generator seeded by `seed`."""
    model.eval()
    torch.manual_seed(seed)
    total = kl_total = 0.0
    for x in batches(images, EVAL_BATCH, device=device):
        c, kl = model(x)                                                  # (B, x_dim), (T, B)
        total += nll_bound(x, c, kl).sum().item()
        kl_total += kl.sum().item()
    model.train()
    return total / len(images), kl_total / len(images)


def train_and_validate(cfg: DrawConfig, data, *, steps: int, batch_size: int, lr: float,
                       seed: int, device: torch.device, label: str, precision: str = "32",
                       matmul: str = "highest") -> dict:
    """Train a fresh model for `steps` Adam steps, its forward passes in `precision`, its
    products at `matmul`, and return its validation numbers (float32)."""
    torch.manual_seed(seed)                   # initialisation and the posterior noise u
    model = DrawModel.from_config(cfg).to(device)
    # the training package's own step: the bound, backward, clipping at 10, Adam
    loop = MainLoop(DrawTask(model), torch.optim.Adam(model.parameters(), lr=lr),
                    precision=precision, matmul_precision=matmul)
    order = torch.Generator().manual_seed(seed)
    per_epoch = len(data.train) // batch_size
    step, epoch, start = 0, 0, time.perf_counter()
    while step < steps:
        epoch += 1
        bar = tqdm(total=min(per_epoch, steps - step), desc=f"{label} epoch {epoch}",
                   leave=False, dynamic_ncols=True)
        bound_sum = kl_sum = 0.0
        n = 0
        for x in batches(data.train, batch_size, generator=order, device=device,
                         drop_last=True):
            loop.step(x)
            sums = loop.last_batch["sums"]
            bound_sum += loop.last_batch["loss"].item()
            kl_sum += (sums["kl_term"].sum() / sums["examples"]).item()
            n += 1
            step += 1
            bar.update()
            bar.set_postfix(bound=f"{bound_sum / n:.2f}")
            if step == steps:
                break
        bar.close()
        tqdm.write(f"{label} epoch {epoch}: step {step}, train bound {bound_sum / n:.2f} "
                   f"(KL {kl_sum / n:.2f}) nats, {time.perf_counter() - start:.0f} s")
    train_s = time.perf_counter() - start
    bound, kl = valid_bound(model, data.valid, device, seed)
    return {"run": label, "precision": precision, "matmul_precision": matmul,
            "config": cfg.to_dict(), "steps": steps,
            "batch_size": batch_size, "lr": lr, "seed": seed, "valid_nll_bound": bound,
            "valid_kl": kl, "train_seconds": train_s}


def main(data_dir: str | None, runs: list[str], precision: list[str], steps: int,
         batch_size: int, n_iter: int, attention: tuple[int, int], lr: float, seed: int,
         device: str, threads: int | None, out: str | None,
         matmul: tuple[str, ...] = ("highest",), learned_initial_state: bool = True):
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                          else "cpu" if device == "auto" else device)
    data = get_data("bmnist", data_dir, download=False)    # a benchmark never downloads
    read_N, write_N = attention
    start = dict(learned_initial_state=learned_initial_state)
    configs = {"attention": DrawConfig(n_iter=n_iter, read_N=read_N, write_N=write_N, **start),
               "plain": DrawConfig(n_iter=n_iter, **start)}
    results = []
    for label, p, m in ((r, p, m) for r in runs for p in precision for m in matmul):
        # the classic labels when only float32 runs, the precisions beside them otherwise
        name = " ".join([label] + [p] * (list(precision) != ["32"])
                        + [f"matmul-{m}"] * (list(matmul) != ["highest"]))
        results.append(train_and_validate(configs[label], data, steps=steps,
                                          batch_size=batch_size, lr=lr, seed=seed,
                                          device=device, label=name, precision=p,
                                          matmul=m))
        r = results[-1]
        print(f"{name}: valid bound {r['valid_nll_bound']:.2f} nats "
              f"(KL {r['valid_kl']:.2f}) after {steps} steps, {r['train_seconds']:.0f} s")
        if out is not None:  # after every run, so an interrupted benchmark keeps the others
            atomic_write_bytes(Path(out).expanduser(),
                               (json.dumps(results, indent=2) + "\n").encode())
    print(" | ".join(f"{r['run']} {r['valid_nll_bound']:.2f}" for r in results))


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=str, default=None,
                        help="where the converted bmnist lives (default: $DRAW_DATA_PATH, "
                             "$FUEL_DATA_PATH, or the cache directory)")
    parser.add_argument("--runs", type=str, nargs="+", choices=RUNS, default=list(RUNS),
                        help="which models to train, in order (default: attention plain)")
    parser.add_argument("--precision", type=str, nargs="+", choices=PRECISIONS, default=["32"],
                        help="train each model once in each of these precisions, from the "
                             "same seed (default: 32)")
    parser.add_argument("--matmul-precision", type=str, nargs="+", dest="matmul",
                        choices=MATMUL_PRECISIONS, default=["highest"],
                        help="and in each of these float32 matmul precisions (default: highest)")
    parser.add_argument("--steps", type=positive, default=2000,
                        help="Adam steps per run (default: 2000, 4 epochs)")
    parser.add_argument("--bs", type=positive, dest="batch_size", default=100,
                        help="images per training batch (default: 100)")
    parser.add_argument("--niter", type=positive, dest="n_iter", default=16,
                        help="number of glimpses T (default: 16)")
    parser.add_argument("--attention", type=window_sizes, default=(2, 5),
                        help="read and write window sizes of the attention run (default: 2,5)")
    parser.add_argument("--lr", type=positive_float, default=1e-3,
                        help="Adam learning rate (default: 1e-3)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of initialisation, batch order and noise (default: 1)")
    parser.add_argument("--device", type=str, default="auto",
                        help="cpu, cuda, cuda:N, or auto: CUDA when available (default: auto)")
    parser.add_argument("--threads", type=positive, default=None,
                        help="CPU threads for torch (default: torch's choice); 1 is fastest "
                             "when other jobs share the cores")
    parser.add_argument("--out", type=output_file, default=None,
                        help="also write the results as JSON to this file (default: none)")
    parser.add_argument("--no-learned-initial-state", dest="learned_initial_state",
                        action="store_false",
                        help="c_0, h_0^enc, h_0^dec at zero, as the models measured before "
                             "2026-12-06 had them (default: learned, section 2.2)")
    run(main, parser.parse_args())
