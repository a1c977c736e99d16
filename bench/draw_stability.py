"""Which of DRAW's bricks the large gradients come from: the instrument behind issue 25's
diagnosis of the unstable two-digit MNIST run.

    python bench/draw_stability.py --dataset two-digit-mnist --steps 300 --out runs/diag.json
    python bench/draw_stability.py --model RUN/NAME_model.pkl --steps 300    # from a saved model

Trains DRAW as train-draw.py does (Adam through `draw.training.main_loop.adam`, the gradient norm
clipped at --grad-clip, the bound of eq. 12 averaged over the batch) and records, every step,
the gradient norm of each brick before clipping: the read head (eq. 21), the write head's window
(eq. 21, its own) and patch (eq. 28), the encoder, the posterior, the decoder; and the write
head's rows, one per window parameter. Every --every steps it prints a row: the bound, the
largest total norm, which brick held it, and the write window's extremes over a fixed batch
(the smallest sigma and gamma, the largest 1/gamma-scaled patch value |w|/gamma).

--window-lr gives both attention heads' window parameters their own Adam rate, a multiple of
--lr, to test that remedy.
"""
import time

import torch
from torch.nn.utils import clip_grad_norm_

from draw.checkpoint import load_model
from draw.cli import ArgumentParser, positive, run
from draw.datasets import batches, get_data
from draw.model import DrawConfig, DrawModel, nll_bound
from draw.training.main_loop import adam

from stability_loop import save_rows, steps_across_epochs, stopped_at_non_finite

WINDOW_NAMES = ("g_y", "g_x", "log_delta", "log_sigma2", "log_gamma")   # eq. 21's columns


def bricks(model: DrawModel) -> dict:
    """name -> module whose gradient norm is recorded."""
    out = {"encoder": model.encoder, "sampler": model.sampler, "decoder": model.decoder}
    if hasattr(model.reader, "readout"):
        out["read_window"] = model.reader.readout
    if hasattr(model.writer, "z_trafo"):
        out["write_window"], out["write_patch"] = model.writer.z_trafo, model.writer.w_trafo
    else:
        out["write"] = model.writer
    return out


def grad_norms(model: DrawModel) -> dict:
    out = {}
    for name, brick in bricks(model).items():
        grads = [p.grad for p in brick.parameters() if p.grad is not None]
        out[name] = float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    if "write_window" in out:       # eq. 21's rows of the write head
        rows = torch.linalg.vector_norm(model.writer.z_trafo.weight.grad, dim=1)     # (5,)
        out.update({f"write_{n}": v for n, v in zip(WINDOW_NAMES, rows.tolist())})
    return out


@torch.no_grad()
def write_window_stats(model: DrawModel, x: torch.Tensor) -> dict:
    """The write windows of the T glimpses of x: extremes over steps and images."""
    if "write_window" not in bricks(model):
        return {}
    state = model.initial_state(x.shape[0], x)
    sigmas, gammas, scaled = [], [], []
    for u in model.noise(x.shape[0], x):
        state, *_ = model.step(state, x, u)
        _, _, sigma, gamma = model.writer.window(state.h_dec)
        w = model.writer.w_trafo(state.h_dec)
        sigmas.append(sigma.min())
        gammas.append(gamma.min())
        scaled.append((w.abs().amax(1) / gamma).max())
    return {"write_sigma_min": float(min(sigmas)), "write_gamma_min": float(min(gammas)),
            "write_scaled_patch_max": float(max(scaled))}


def main(dataset: str, model_path: str | None, niter: int, lr: float, window_lr: float,
         steps: int, every: int, bs: int, seed: int, grad_clip: float, out: str | None) -> None:
    torch.manual_seed(seed)
    if model_path:
        model, _ = load_model(model_path)
        data = get_data(dataset)
    else:
        data = get_data(dataset)
        C, H, W = data.shape
        model = DrawModel.from_config(DrawConfig(channels=C, height=H, width=W, n_iter=niter,
                                                 read_N=2, write_N=5))
    windows = model.window_parameters()
    rest = [p for p in model.parameters() if all(p is not q for q in windows)]
    optimizer = adam([{"params": rest}, {"params": windows, "lr": lr * window_lr}], lr)
    generator = torch.Generator().manual_seed(seed)
    probe = next(batches(data.valid, 100))
    rows, window, start = [], [], time.time()

    def train(epoch: int):
        return batches(data.train, bs, generator=generator, epoch=epoch, drop_last=True)

    for step, _, x, row_due in steps_across_epochs(train, steps, every):
        optimizer.zero_grad(set_to_none=True)
        c, kl = model(x)
        loss = nll_bound(x, c, kl).mean()
        loss.backward()
        norms = grad_norms(model)
        total = float(clip_grad_norm_(model.parameters(), grad_clip))
        optimizer.step()
        window.append((loss.item(), total, norms))
        if stopped_at_non_finite(loss, step):
            break
        if row_due:
            worst = max(window, key=lambda w: w[1])
            row = {"step": step, "bound": sum(w[0] for w in window) / len(window),
                   "grad_total_median": sorted(w[1] for w in window)[len(window) // 2],
                   "grad_total_max": worst[1],
                   **{f"at_max_{k}": v for k, v in worst[2].items()},
                   **{f"{k}_median": sorted(w[2][k] for w in window)[len(window) // 2]
                      for k in worst[2]},
                   **write_window_stats(model, probe)}
            rows.append(row)
            window = []
            top = sorted(((v, k) for k, v in worst[2].items()
                          if not k.startswith("write_") or k.endswith(("window", "patch"))),
                         reverse=True)
            print(f"step {step:5d} | bound {row['bound']:.1f} | |g| median "
                  f"{row['grad_total_median']:.3g} max {row['grad_total_max']:.3g}: "
                  + ", ".join(f"{k} {v:.3g}" for v, k in top)
                  + " | write rows " + " ".join(f"{n} {worst[2].get(f'write_{n}', 0):.3g}"
                                                for n in WINDOW_NAMES)
                  + f" | sigma min {row.get('write_sigma_min', 0):.3g} gamma min "
                    f"{row.get('write_gamma_min', 0):.3g} |w|/gamma max "
                    f"{row.get('write_scaled_patch_max', 0):.3g} | "
                    f"{time.time() - start:.0f} s", flush=True)
    save_rows(rows, out)


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="two-digit-mnist", help="dataset to train on")
    parser.add_argument("--model", dest="model_path", default=None,
                        help="start from this model file's weights (fresh Adam)")
    parser.add_argument("--niter", type=int, default=64, help="glimpses T")
    parser.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate")
    parser.add_argument("--window-lr", type=float, default=1.0,
                        help="the attention windows' learning rate as a multiple of --lr")
    parser.add_argument("--steps", type=positive, default=300, help="training steps")
    parser.add_argument("--every", type=positive, default=25, help="steps between rows")
    parser.add_argument("--bs", type=int, default=100, help="batch size")
    parser.add_argument("--seed", type=int, default=1, help="seed")
    parser.add_argument("--grad-clip", type=float, default=10.0, help="gradient norm clip")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    run(main, parser.parse_args())
