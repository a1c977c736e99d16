"""Images beside the model's reconstructions of them, and samples from the prior: whether a model
whose samples are poor encodes its data well (the gap is on the prior's side: z_t ~ N(0, I)
decodes to what Q(Z_t|h_t^enc) rarely gives) or does not (the gap is in the whole model).

    python bench/reconstructions.py runs/RUN/NAME_model.pkl --out reconstructions.png

The picture: every row holds COLS pairs, an image of the split (the first N of it, in the
stored order) and its reconstruction sigmoid(c_T) (eq. 9's means, one draw of z from Q), then a
row of the prior's samples for comparison, one row for each --temperatures tau (z_t = tau * u_t
with the same u_t ~ N(0, I) in every row: tau < 1 shows what the prior's centre decodes to; a
learned prior's z_t is m_t + tau s_t u_t).

It prints the mean reconstruction term L^x (eq. 9) and KL term L^z (eq. 10) of those images (a
large L^z with a small L^x is a model that encodes well and leans on its latents), and the mean
ink spread (`ink_spread`) of the images, the reconstructions and max(N, 2 COLS) samples at each
temperature: on two-digit MNIST, samples that put both digits in one place have a smaller
spread than the data. Compare the samples with the reconstructions, both sigmoid(c_T) with its
faint haze, more than with the images.
"""

import torch
from PIL import Image
from torch import Tensor

from draw.checkpoint import build_model, load_checkpoint
from draw.cli import ArgumentParser, positive, run, seed as seed_type, temperature_list
from draw.datasets import batches
from draw.model import DrawModel, reconstruction_loss
from draw.outputs.plotting import check_output_files, image_grid, save_png
from draw.outputs.scores import model_images


def ink_spread(images: Tensor) -> Tensor:
    """The RMS distance in pixels of each image's ink (its intensities, summed over channels) from
    the image's centre of ink: (B, C, H, W) -> (B,); 0 for an image with no ink."""
    ink = images.sum(dim=1)                                      # (B, H, W)
    rows = torch.arange(ink.shape[1], dtype=ink.dtype, device=ink.device)[:, None]   # (H, 1)
    cols = torch.arange(ink.shape[2], dtype=ink.dtype, device=ink.device)[None, :]   # (1, W)
    mass = ink.sum(dim=(1, 2)).clamp_min(torch.finfo(ink.dtype).tiny)
    cy = (ink * rows).sum(dim=(1, 2)) / mass                     # (B,)
    cx = (ink * cols).sum(dim=(1, 2)) / mass
    d2 = (rows - cy[:, None, None]) ** 2 + (cols - cx[:, None, None]) ** 2
    return ((ink * d2).sum(dim=(1, 2)) / mass).sqrt()


@torch.no_grad()
def reconstruct(model: DrawModel, x: Tensor,
                generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """sigmoid(c_T) of `x` (B, x_dim) in [0, 1] through the encoder, and the per-image L^x and
    L^z (B,) each, with z drawn from Q by `generator`."""
    u = model.noise(x.shape[0], x, generator)
    c, kl = model(x, u)                                          # (B, x_dim), (T, B)
    return torch.sigmoid(c), reconstruction_loss(x, c), kl.sum(dim=0)


def pairs_grid(images: Tensor, recon: Tensor, samples: Tensor, cols: int) -> Image.Image:
    """A grid of (image, reconstruction) pairs, `cols` pairs a row, then rows of 2 * `cols`
    samples; all (n, C, H, W)."""
    n = images.shape[0]
    rows = -(-n // cols)
    cells = torch.stack([images, recon], dim=1).flatten(0, 1)  # (2n, C, H, W): image, recon, ...
    cells = torch.cat([cells, cells.new_full((2 * (rows * cols - n),) + cells.shape[1:], 0.5),
                       samples])
    return image_grid(cells, rows + len(samples) // (2 * cols), 2 * cols)


def main(model_file: str, out: str, dataset: str | None = None, split: str = "valid",
         n: int = 50, cols: int = 5, seed: int = 0, data_dir: str | None = None,
         temperatures: tuple[float, ...] = (1.0,)) -> None:
    check_output_files([("--out", out)], inputs=[model_file])      # before the work, not after
    ckpt = load_checkpoint(model_file)
    model = build_model(ckpt, model_file).eval()
    cfg = model.config
    # the model's dataset (or --dataset), checked against its image shape, as evaluate.py reads it
    dataset, images, binary = model_images(model_file, cfg, dataset, ckpt.get("run") or {}, split,
                                           None, seed, data_dir)
    x = next(batches(images, n))                                 # (n, x_dim) in [0, 1], stored order
    generator = torch.Generator().manual_seed(seed)
    recon, lx, lz = reconstruct(model, x, generator)
    # the shown samples' noise first, as before the spreads: the same picture for a seed
    m = max(n, 2 * cols)                                         # samples a temperature
    u = torch.cat([model.noise(2 * cols, x, generator),
                   model.noise(m - 2 * cols, x, generator)], dim=1)   # (T, m, z_dim)
    shape = (-1, cfg.channels, cfg.height, cfg.width)
    samples = [model.sample(m, tau * u)[-1].view(shape) for tau in temperatures]  # (m, C, H, W)
    shown = torch.cat([s[:2 * cols] for s in samples])
    save_png(pairs_grid(x.view(shape), recon.view(shape), shown, cols), out)
    # grey levels: eq. 12 is the training objective, not a bound on -log p(x) (evaluate.py)
    total = "the bound (eq. 12)" if binary else "the objective (eq. 12, grey levels)"
    print(f"{model_file}: {dataset} {split}, the first {x.shape[0]} images: "
          f"L^x {lx.mean():.2f} + L^z {lz.mean():.2f} = {(lx + lz).mean():.2f} nats, {total}; "
          f"{out}: images and reconstructions in pairs, {cols} pairs a row, then "
          f"rows of {2 * cols} samples at temperature {', '.join(map(str, temperatures))}")
    spreads = [ink_spread(x.view(shape)), ink_spread(recon.view(shape))]
    spreads += [ink_spread(s) for s in samples]
    names = ["images", "reconstructions"] + [f"{m} samples at {tau}" for tau in temperatures]
    print("ink spread (pixels, RMS from the centre of ink): "
          + ", ".join(f"{name} {v.mean():.2f}" for name, v in zip(names, spreads)))


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_file", help="a <name>_model.pkl file of train-draw.py")
    parser.add_argument("--out", default="reconstructions.png", help="the picture to write")
    parser.add_argument("--dataset", default=None,
                        help="the data to reconstruct (default: the model file's dataset)")
    parser.add_argument("--split", default="valid", choices=("train", "valid", "test"),
                        help="the split whose first images are reconstructed")
    parser.add_argument("--n", type=positive, default=50, help="images to reconstruct")
    parser.add_argument("--cols", type=positive, default=5, help="pairs a row")
    parser.add_argument("--seed", type=seed_type, default=0, help="seed of z's draws")
    parser.add_argument("--data-dir", default=None, help="where the converted datasets are")
    parser.add_argument("--temperatures", type=temperature_list, default=(1.0,), metavar="TAU,...",
                        help="a row of samples for each, z = TAU * N(0, I) from the same draw "
                             "(default: 1, the prior)")
    run(main, parser.parse_args())
