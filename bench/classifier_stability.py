"""What the read window and the gradients of the cluttered-MNIST classifier do while it trains:
the instrument behind issue 20's diagnosis of the 8-glimpse run that diverged at lr 1e-3.

    python bench/classifier_stability.py --niter 8 --lr 1e-3 --steps 2500 --out runs/diag.json

Trains `AttentionClassifier` on cluttered-mnist as train-classifier.py does (Adam through
`draw.training.main_loop.adam`, the gradient norm clipped at --grad-clip, batches of fresh
images from --seed), and every --every steps prints and records:

- the training cross-entropy and error over the last --every steps;
- the gradient norm of each brick before clipping: the read head (`reader.readout`, eq. 21),
  the LSTM and the softmax layer;
- per glimpse, over the batch: the stride delta, the filter width sigma and the intensity gamma
  (median and max; sigma's min), and the share of windows whose centre lies outside the image;
- the LSTM's input scale: the largest |r_t| of a glimpse and the share of saturated input-gate
  pre-activations (|a| > 5).

The run is stopped at the first non-finite loss. The JSON holds every row, for doc/.
"""
import time

import torch
from torch.nn.utils import clip_grad_norm_

from draw.classifier import (WINDOW_NAMES, AttentionClassifier, ClassifierConfig,
                             classification_loss, errors)
from draw.cli import ArgumentParser, positive, run
from draw.datasets import get_labelled, labelled_batches
from draw.training.main_loop import adam

from stability_loop import save_rows, steps_across_epochs, stopped_at_non_finite


def brick_grad_norms(model: AttentionClassifier) -> dict:
    """The 2-norm of each brick's gradient, before clipping."""
    out = {}
    for name, brick in (("readout", model.reader.readout), ("lstm", model.lstm),
                        ("softmax", model.classifier)):
        grads = [p.grad for p in brick.parameters() if p.grad is not None]
        out[f"grad_{name}"] = float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    # the read head's rows, one per window parameter of eq. 21
    rows = torch.linalg.vector_norm(model.reader.readout.weight.grad, dim=1)          # (5,)
    for name, value in zip(WINDOW_NAMES, rows.tolist()):
        out[f"grad_read_{name}"] = value
    return out


@torch.no_grad()
def window_stats(model: AttentionClassifier, x: torch.Tensor) -> dict:
    """Per glimpse t: delta, sigma and gamma over the batch, the share of window centres outside
    the image, the largest glimpse value, and input-gate saturation."""
    _, att = model(x, return_attention=True)                           # each (T, B)
    H, W = model.config.height, model.config.width
    outside = ((att["center_y"] < 0) | (att["center_y"] > H - 1)
               | (att["center_x"] < 0) | (att["center_x"] > W - 1)).float().mean(1)
    stats = {"delta_median": att["delta"].median(1).values, "delta_max": att["delta"].amax(1),
             "sigma_min": att["sigma"].amin(1), "sigma_median": att["sigma"].median(1).values,
             "gamma_median": att["gamma"].median(1).values, "gamma_max": att["gamma"].amax(1),
             "outside": outside}
    # the glimpses and the LSTM's input gate, glimpse by glimpse, as the forward computes them
    h = x.new_zeros(x.shape[0], model.lstm.hidden_size)
    c = torch.zeros_like(h)
    r_max, saturated = [], []
    Hd = model.lstm.hidden_size
    for _ in range(model.n_iter):
        r, _ = model.reader(x, h)
        gates = r @ model.lstm.weight_ih.T + model.lstm.bias_ih + h @ model.lstm.weight_hh.T \
            + model.lstm.bias_hh                                        # (B, 4H)
        r_max.append(r.abs().amax())
        saturated.append((gates[:, :Hd].abs() > 5).float().mean())
        h, c = model.lstm(r, (h, c))
    stats["glimpse_max"] = torch.stack(r_max)
    stats["input_gate_saturated"] = torch.stack(saturated)
    return {k: [round(float(v), 4) for v in vals] for k, vals in stats.items()}


def state_gradients(model: AttentionClassifier, x: torch.Tensor, y: torch.Tensor) -> list:
    """||dL/dh_t|| for t = 1..T on one batch: growing towards t = 1 is a gradient that explodes
    back through the glimpses."""
    h = x.new_zeros(x.shape[0], model.lstm.hidden_size)
    c = torch.zeros_like(h)
    states = []
    for _ in range(model.n_iter):
        r, _ = model.reader(x, h)
        h, c = model.lstm(r, (h, c))
        h.retain_grad()
        states.append(h)
    classification_loss(model.classifier(h), y).mean().backward()
    norms = [round(float(torch.linalg.vector_norm(s.grad)), 5) for s in states]
    model.zero_grad(set_to_none=True)
    return norms


@torch.no_grad()
def valid_error(model: AttentionClassifier, split, n: int) -> float:
    err = count = 0.0
    for x, y in labelled_batches(split, 500):
        err += float(errors(model(x), y).sum())
        count += len(y)
        if count >= n:
            break
    return 100 * err / count


def main(niter: int, lr: float, steps: int, every: int, bs: int, seed: int, grad_clip: float,
         valid_images: int, out: str | None, detach_window: bool, read_lr: float) -> None:
    torch.manual_seed(seed)
    data = get_labelled("cluttered-mnist", seed=seed)
    C, H, W = data.shape
    model = AttentionClassifier.from_config(ClassifierConfig(channels=C, height=H, width=W,
                                                             n_iter=niter))
    if detach_window:       # the window chosen from h_{t-1} with no gradient into h_{t-1}
        forward = model.reader.forward
        model.reader.forward = lambda x, h: forward(x, h.detach())
    read = list(model.reader.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in read)]
    optimizer = adam([{"params": rest}, {"params": read, "lr": lr * read_lr}], lr)
    generator = torch.Generator().manual_seed(seed)
    rows, window, start = [], [], time.time()
    probe = None

    def train(epoch: int):
        return labelled_batches(data.train, bs, generator=generator, epoch=epoch,
                                drop_last=True)

    for step, epoch, (x, y), row_due in steps_across_epochs(train, steps, every):
        if probe is None:
            probe, probe_y = x[:100], y[:100]      # a fixed batch to watch the windows on
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = classification_loss(logits, y).mean()
        loss.backward()
        norms = brick_grad_norms(model)
        total = float(clip_grad_norm_(model.parameters(), grad_clip))
        optimizer.step()
        window.append((loss.item(), float(errors(logits.detach(), y).mean()), total, norms))
        if stopped_at_non_finite(loss, step):
            break
        if row_due:
            row = {"step": step, "epoch": epoch,
                   "train_xent": sum(w[0] for w in window) / len(window),
                   "train_error": 100 * sum(w[1] for w in window) / len(window),
                   "grad_total_mean": sum(w[2] for w in window) / len(window),
                   "grad_total_max": max(w[2] for w in window)}
            for key in window[0][3]:
                row[f"{key}_max"] = max(w[3][key] for w in window)
            row["valid_error"] = valid_error(model, data.valid, valid_images)
            row.update(window_stats(model, probe))
            row["state_grad"] = state_gradients(model, probe, probe_y)
            rows.append(row)
            window = []
            print(f"step {step:5d} ep {epoch} | xent {row['train_xent']:.3f} "
                  f"err {row['train_error']:.1f}% valid {row['valid_error']:.1f}% | "
                  f"|g| mean {row['grad_total_mean']:.3g} max {row['grad_total_max']:.3g} "
                  f"(read {row['grad_readout_max']:.3g} lstm {row['grad_lstm_max']:.3g} "
                  f"soft {row['grad_softmax_max']:.3g}; read rows "
                  + " ".join(f"{row[f'grad_read_{n}_max']:.3g}" for n in WINDOW_NAMES)
                  + ") | "
                  f"delta {row['delta_median']} sigma min {row['sigma_min']} "
                  f"gamma max {row['gamma_max']} out {row['outside']} "
                  f"sat {row['input_gate_saturated']} | dL/dh {row['state_grad']} | "
                  f"{time.time() - start:.0f} s",
                  flush=True)
    save_rows(rows, out)


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--niter", type=int, default=8, help="glimpses T")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--steps", type=positive, default=2500, help="training steps")
    parser.add_argument("--every", type=positive, default=50, help="steps between rows")
    parser.add_argument("--bs", type=int, default=100, help="batch size")
    parser.add_argument("--seed", type=int, default=1, help="seed")
    parser.add_argument("--grad-clip", type=float, default=10.0, help="gradient norm clip")
    parser.add_argument("--valid-images", type=int, default=1000,
                        help="valid images scored at every row")
    parser.add_argument("--detach-window", action="store_true",
                        help="no gradient from the window back into the state that chose it")
    parser.add_argument("--read-lr", type=float, default=1.0,
                        help="the read head's learning rate as a multiple of --lr")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    run(main, parser.parse_args())
