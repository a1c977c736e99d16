"""Whether a model's prior P(Z_t) = N(0, I) matches what its posterior gives at each step, in the
ways a refit of the prior could use: where the samples are poor and the reconstructions good
(bench/reconstructions.py), is the gap in the moments of z_t, or in how z_t depends on the
decoder's state, or beyond both?

    python bench/prior_fit.py runs/RUN/NAME_model.pkl [--n 8000] [--read]

Over N training images (a random subset, one posterior draw of z each) it prints, for steps in
groups of 8:

- L^z: the mean KL(Q(Z_t|h_t^enc) || N(0, I)), eq. 10 before the sum over t.
- fit KL: KL(N(mu_t, S_t) || N(0, I)), where mu_t and S_t are the mean and covariance of the
  aggregate posterior (the mixture over images of Q(Z_t|h_t^enc)). Near 0, a Gaussian prior
  refitted at each step would be the one the model has.
- R^2: how much of the posterior mean of z_t a linear map of h_{t-1}^dec, the decoder's state
  before z_t, predicts. It is fitted on three quarters of the images and measured on the rest.
  The floor is the same fit with the states shuffled between images: what 1 + dec_dim
  coefficients find in noise. Near the floor, no prior that is linear in the state would do better.

Then, for all steps together, over the dimensions of z_{1:T} whose posterior means vary between
images (a variance above ACTIVE; the others the decoder mostly ignores): the KL of one joint
Gaussian fit against N(0, I), beside that of the fit's per-step blocks alone. Their difference
is the dependence between the steps' z that a joint Gaussian prior would model; its floor is
the same difference with each step's images shuffled apart, what the fit finds by chance.

With --read (two-digit MNIST models), bench/two_digit_reader.py's reader reads --samples
samples from N(0, I), from the refitted per-step Gaussians, and from the joint Gaussian over
the active dimensions with and without its entries between steps (the rest N(0, 1)), all made
from the same noise.

With a model trained with --learned-prior, z_t is everywhere z'_t, the learned prior's standard
normal (draw/bricks.py, LearnedPrior): N(0, I) is that prior, and R^2 the part of the
posterior mean that the learned prior leaves to be predicted.
"""

import torch
from torch import Tensor

from draw.checkpoint import build_model, load_checkpoint
from draw.cli import ArgumentParser, positive, run, seed as seed_type
from draw.datasets import batches
from draw.model import DrawModel
from draw.outputs.scores import model_images

import two_digit_reader as reader_script        # a sibling script: its reader, for --read

GROUP = 8                   # steps per printed row
ACTIVE = 0.1                # a dimension is active where its posterior means' variance is above


@torch.no_grad()
def posterior_path(model: DrawModel, x: Tensor, generator: torch.Generator, batch: int = 500
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """One posterior draw through all T glimpses of x (N, x_dim): the posterior's means and log
    sigmas, (T, N, z_dim) each in float64, and the decoder state h_{t-1}^dec before each z_t,
    (T, N, dec_dim) in the model's float32 (T N dec_dim doubles would be 164 MB at T = 64, N =
    8,000)."""
    means, log_sigmas, states = [], [], []
    for part in x.split(batch):
        u = model.noise(len(part), part, generator)
        state = model.initial_state(len(part), part)
        path = []
        for u_t in u:
            h_dec = state.h_dec
            state, _, mean, log_sigma = model.step(state, part, u_t)
            path.append((mean.double(), log_sigma.double(), h_dec))
        for store, value in zip((means, log_sigmas, states), zip(*path)):
            store.append(torch.stack(value))
    return tuple(torch.cat(store, dim=1) for store in (means, log_sigmas, states))


def aggregate_gaussian(means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor]:
    """The mean (T, Z) and covariance (T, Z, Z) of each step's mixture over N images of
    N(mean_i, diag(variance_i)), given (T, N, Z) each."""
    mu = means.mean(dim=1)
    centred = means - mu[:, None]
    cov = centred.transpose(1, 2) @ centred / means.shape[1]
    return mu, cov + torch.diag_embed(variances.mean(dim=1))


def flatten(v: Tensor) -> Tensor:
    """(T, N, Z) -> (N, T Z): each image's z_1..z_T as one vector, z_t's dimension z at t Z + z."""
    return v.permute(1, 0, 2).reshape(v.shape[1], -1)


def unflatten(flat: Tensor, steps: int) -> Tensor:
    """`flatten`'s inverse: (N, T Z) -> (T, N, Z), for T = steps."""
    return flat.view(len(flat), steps, -1).permute(1, 0, 2)


def active_dimensions(means: Tensor, threshold: float = ACTIVE) -> Tensor:
    """The indices into `flatten` (D,) of the dimensions whose posterior means (T, N, Z) vary
    between the N images by a variance above `threshold`."""
    return (flatten(means).var(dim=0) > threshold).nonzero().squeeze(1)


def joint_gaussian(means: Tensor, variances: Tensor, active: Tensor,
                   apart: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The aggregate Gaussian of z_{1:T} as one vector, over the `active` dimensions (D,), of
    the posterior means and variances (T, N, Z): its mean (D,), its covariance (D, D), and the
    same covariance with its entries between different steps zeroed. With `apart`, each step's
    images are first put in an order of their own: every step's fit stays as it was, the
    dependence between the steps is gone, and what the joint fit still finds is chance."""
    m, v = flatten(means)[:, active], flatten(variances)[:, active]         # (N, D) copies
    step = active // means.shape[2]
    if apart is not None:
        for t in step.unique():
            order, cols = torch.randperm(len(m), generator=apart), step == t
            m[:, cols], v[:, cols] = m[order][:, cols], v[order][:, cols]
    mu, cov = aggregate_gaussian(m[None], v[None])
    return mu[0], cov[0], cov[0] * (step[:, None] == step[None, :])


def kl_to_standard_normal(mu: Tensor, cov: Tensor) -> Tensor:
    """KL(N(mu, cov) || N(0, I)) of each row, (T,), for mu (T, Z) and cov (T, Z, Z)."""
    z = mu.shape[-1]
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    return 0.5 * (trace + (mu ** 2).sum(-1) - z - torch.logdet(cov))


def both_kls(mu: Tensor, cov: Tensor, blocks: Tensor) -> tuple[float, float]:
    """`kl_to_standard_normal` of a joint fit (`joint_gaussian`) and of its per-step blocks."""
    return tuple(kl_to_standard_normal(mu[None], c[None]).item() for c in (cov, blocks))


def held_out_r2(features: Tensor, targets: Tensor, fit: int) -> float:
    """R^2, on rows fit: of `targets` (N, Z), of the least-squares affine map of `features` (N,
    D) fitted on rows :fit; 1 - residual / total sum of squares, the total about the fitted
    rows' mean. In float64."""
    features, targets = features.double(), targets.double()
    design = torch.cat([features, features.new_ones(len(features), 1)], dim=1)
    weights = torch.linalg.lstsq(design[:fit], targets[:fit]).solution
    residual = ((targets[fit:] - design[fit:] @ weights) ** 2).sum()
    total = ((targets[fit:] - targets[:fit].mean(dim=0)) ** 2).sum()
    return (1 - residual / total).item()


def main(model_file: str, n: int = 8000, read: bool = False, samples: int = 1000,
         seed: int = 0, dataset: str | None = None, data_dir: str | None = None
         ) -> dict[str, Tensor | float]:
    """Print the three measures per group of steps (and with `read`, the three shares); return
    them per step, and the joint fit's two KLs and active dimensions."""
    ckpt = load_checkpoint(model_file)
    model = build_model(ckpt, model_file).eval()
    cfg = model.config
    if read:
        reader_script.check_two_digit(model, model_file)
    _, images, _ = model_images(model_file, cfg, dataset, ckpt.get("run") or {}, "train", n,
                                seed, data_dir)
    mnist = reader_script.labelled_mnist(data_dir) if read else None    # before the work
    x = next(batches(images, len(images)))                                   # (N, x_dim)
    generator = torch.Generator().manual_seed(seed)
    means, log_sigmas, states = posterior_path(model, x, generator)
    T, count = means.shape[:2]
    fit = 3 * count // 4
    shuffled = torch.randperm(count, generator=generator)
    lz = model.sampler.kl(means, log_sigmas).mean(dim=1)                     # eq. 10: (T,)
    mu, cov = aggregate_gaussian(means, torch.exp(2 * log_sigmas))
    fit_kl = kl_to_standard_normal(mu, cov)
    # z_1 has no decoder state before it but the (learned) initial one, the same for all
    r2 = torch.tensor([float("nan")] + [held_out_r2(states[t], means[t], fit)
                                        for t in range(1, T)])
    floor = torch.tensor([float("nan")] + [held_out_r2(states[t][shuffled], means[t], fit)
                                           for t in range(1, T)])
    print(f"{model_file}: {count} training images, one posterior draw each; R^2 fitted on "
          f"{fit}, measured on {count - fit}")
    print(f"{'steps':>9}{'L^z':>9}{'fit KL':>9}{'R^2':>9}{'floor':>9}")
    for start in range(0, T, GROUP):
        part = slice(start, min(start + GROUP, T))
        print(f"{start + 1:>4}-{part.stop:<4}{lz[part].sum():>9.2f}{fit_kl[part].sum():>9.2f}"
              f"{r2[part].nanmean():>9.3f}{floor[part].nanmean():>9.3f}")
    print(f"{'all':>9}{lz.sum():>9.2f}{fit_kl.sum():>9.2f}{r2.nanmean():>9.3f}"
          f"{floor.nanmean():>9.3f}   (L^z and fit KL summed, R^2 averaged over the steps)")
    variances = torch.exp(2 * log_sigmas)
    active = active_dimensions(means)
    joint = joint_gaussian(means, variances, active)
    joint_kl, block_kl = both_kls(*joint)
    apart_kl, apart_block_kl = both_kls(*joint_gaussian(means, variances, active, generator))
    print(f"all steps together, the {len(active)} of {T * cfg.z_dim} dimensions of z_1..z_T "
          f"whose posterior means vary by a variance above {ACTIVE}: fit KL {joint_kl:.2f} "
          f"jointly, {block_kl:.2f} step by step; with each step's images shuffled apart "
          f"{apart_kl:.2f} and {apart_block_kl:.2f}")
    result = {"lz": lz, "fit_kl": fit_kl, "r2": r2, "floor": floor, "joint_kl": joint_kl,
              "block_kl": block_kl, "apart_kl": apart_kl, "apart_block_kl": apart_block_kl,
              "active": active}
    if read:
        result.update(read_all(model, mu, cov, active, joint, samples, seed, mnist))
    return result


def read_all(model: DrawModel, mu: Tensor, cov: Tensor, active: Tensor, joint: tuple,
             samples: int, seed: int, mnist) -> dict[str, float]:
    """The reader's share of two-digit canvases among samples from N(0, I), from the refitted
    N(mu_t, cov_t), z_t = mu_t + L_t u_t (L_t L_t^T = cov_t), and from the joint Gaussian over
    the active dimensions (`joint_gaussian`; the others N(0, 1) as before), with and without
    its entries between steps, all with the same u; the reader as bench/two_digit_reader.py
    trains it by default, on `mnist`."""
    u = torch.randn(model.noise_shape(samples), generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)                                     # (T, n, Z)
    refitted = mu[:, None] + u @ torch.linalg.cholesky(cov).transpose(1, 2)
    joint_mu, *covariances = joint
    T = u.shape[0]
    drawn = []
    for c in covariances:
        flat = flatten(u).clone()                                           # (n, T Z)
        flat[:, active] = joint_mu + flat[:, active] @ torch.linalg.cholesky(c).T
        drawn.append(unflatten(flat, T))                                     # (T, n, Z)
    canvases = {name: model.sample(samples, z.float())[-1].clone()
                for name, z in (("N(0, I)", u), ("refitted", refitted), ("joint", drawn[0]),
                                ("joint, steps apart", drawn[1]))}
    with torch.enable_grad():
        reader = reader_script.train_reader(mnist.train.numpy().reshape(-1, 28, 28),
                                            mnist.train_labels.long(),
                                            reader_script.READER_CANVASES,
                                            reader_script.READER_EPOCHS, seed)
    shares = {}
    for name, c in canvases.items():
        _, classes, probabilities = reader_script.read_two(reader, c.view(-1, 60, 60))
        read = reader_script.read_as_digits(classes, probabilities,
                                            reader_script.CONFIDENCE).all(dim=1)
        shares[name] = read.float().mean().item()
        print(f"samples from {name}: {shares[name]:.1%} of {samples} read as two digits")
    return shares


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_file", metavar="MODEL", help="a <name>_model.pkl")
    parser.add_argument("--n", type=positive, default=8000, help="training images to encode")
    parser.add_argument("--read", action="store_true",
                        help="read samples of the three priors (two-digit MNIST models)")
    parser.add_argument("--samples", type=positive, default=1000,
                        help="samples of each prior to read")
    parser.add_argument("--seed", type=seed_type, default=0,
                        help="seed of the subset, the noise and the reader")
    parser.add_argument("--dataset", default=None,
                        help="the images to encode (default: the model's training set)")
    parser.add_argument("--data-dir", default=None, help="where the converted datasets are")
    run(main, parser.parse_args())
