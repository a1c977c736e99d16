"""Is the gap between a model's samples and its reconstructions the shape of its prior? Two
measures, after training, with the model fixed:

    python bench/second_stage.py runs/RUN/NAME_model.pkl [--n 10000] [--read]

1. **Where the decoder's information lies.** The reconstructions decode the posterior's draws of
   z_1..z_T. With --read, the reader reads them whole, and with all but the coordinates whose
   posterior means vary between images by a variance above bench/prior_fit.py's ACTIVE (a few
   hundred of T z_dim, most of L^z) replaced by fresh N(0, 1) noise, in two ways: in the draws
   as they were (the kept coordinates were chosen for canvases that the noise now changes), and
   in paths along which the encoder sees the canvases that the noise makes and chooses the kept
   coordinates for them. The second is what a prior over those coordinates could give the
   samples if it knew, as Q does, what the noise drew so far. Then paths whose z_1..z_k all come
   from Q and the rest from N(0, I), for k in HANDOVERS: at which steps the prior's draws lose
   what the posterior's keep. And samples whose coordinates other than the active ones are 0:
   whether the noise there spoils them.
2. **A conditional prior fitted after training.** p(z_t | h_{t-1}^dec), a mixture of
   --components Gaussians with diagonal covariances whose weights, means and scales an MLP
   computes from the decoder's state before z_t (--condition cell: and its LSTM's cell;
   canvas: and the canvas so far, pooled), is fitted by maximum likelihood to the pairs
   (h_{t-1}^dec, z_t) of posterior paths of --n training images, one draw each, for --epochs
   passes; the pass whose log-likelihood on --held-out valid images' paths is best is kept. Its
   held-out log p(z_1..z_T) is printed beside N(0, I)'s. With --read, samples drawn from it (z_t
   from the mixture given the state its own earlier draws made) are read beside N(0, I)'s.
   With --active-only the mixture models only the active coordinates of each z_t (the others
   are N(0, 1)'s), so that the thousands of others do not swamp its fit. It is the learned
   prior of Gregor et al.'s convolutional DRAW (2016) in a weaker form: fitted to a decoder
   trained for N(0, I), not trained with it (train-draw.py --learned-prior trains one with it).

With a model trained with --learned-prior, z_t is everywhere z'_t, the learned prior's standard
normal (draw/bricks.py, LearnedPrior), and N(0, I) is that prior.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from draw.checkpoint import build_model, load_checkpoint
from draw.cli import ArgumentParser, positive, run, seed as seed_type
from draw.datasets import Data, batches
from draw.errors import DrawError
from draw.model import DrawConfig, DrawModel, DrawState
from draw.outputs.scores import model_images

import prior_fit                                # sibling scripts: ACTIVE and flatten
import two_digit_reader as reader_script        # and the reader, for --read

LOG_2PI = math.log(2 * math.pi)
HANDOVERS = (16, 32, 48)    # with --read, paths with z_1..z_k from Q and the rest from N(0, I)
POOL = 3                    # --condition canvas: the canvas averaged over POOL x POOL pixels
CONDITIONS = ("state", "cell", "canvas")


def check_condition(condition: str) -> None:
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")


def condition_size(cfg: DrawConfig, condition: str) -> int:
    """The size of what the prior sees (`prior_input`) for a model of config cfg."""
    check_condition(condition)
    if condition == "state":
        return cfg.dec_dim
    if condition == "cell":
        return 2 * cfg.dec_dim
    return cfg.dec_dim + cfg.channels * (cfg.height // POOL) * (cfg.width // POOL)


def prior_input(state: DrawState, condition: str, shape: tuple[int, int, int]) -> Tensor:
    """What the prior of z_t sees of the generation so far, (B, condition_size): the decoder's
    state h_{t-1}^dec ("state"); with its LSTM's cell ("cell"); or with the canvas
    sigma(c_{t-1}) of shape (C, H, W), averaged over POOL x POOL pixels ("canvas")."""
    check_condition(condition)
    if condition == "state":
        return state.h_dec
    if condition == "cell":
        return torch.cat([state.h_dec, state.cell_dec], dim=1)
    canvas = torch.sigmoid(state.c).view(-1, *shape)
    return torch.cat([state.h_dec, F.avg_pool2d(canvas, POOL).flatten(1)], dim=1)


@torch.no_grad()
def posterior_pairs(model: DrawModel, images: Tensor, generator: torch.Generator,
                    condition: str = "state", batch: int = 500) -> tuple[Tensor, Tensor, Tensor]:
    """One posterior path through all T glimpses of each image (N, x_dim uint8): what the prior
    sees before each z_t (`prior_input`) and the draws z_t, (T, N, condition_size) and (T, N,
    z_dim), and the posterior means' variance between the images in prior_fit.flatten's order
    (T z_dim,)."""
    cfg = model.config
    states, draws, means = [], [], []
    for x in tqdm(batches(images, batch), total=math.ceil(len(images) / batch),
                  desc="posterior paths", unit="batch", leave=False):
        state = model.initial_state(len(x), x)
        path = []
        for u_t in model.noise(len(x), x, generator):
            seen = prior_input(state, condition, (cfg.channels, cfg.height, cfg.width))
            state, z, mean, _ = model.step(state, x, u_t)
            path.append((seen, z, mean))
        for store, value in zip((states, draws, means), zip(*path)):
            store.append(torch.stack(value))
    means = prior_fit.flatten(torch.cat(means, dim=1)).double()
    return torch.cat(states, dim=1), torch.cat(draws, dim=1), means.var(dim=0)


class KeptCoordinates(nn.Module):
    """Q's sampler (eq. 6) for a path in which only the coordinates keep[t] (T, z_dim) of z_t
    come from the posterior and the others are the prior noise u_t itself: one step after
    another, as DrawModel.step calls it."""

    def __init__(self, sampler: nn.Module, keep: Tensor):
        super().__init__()
        self.sampler, self.keep, self.t = sampler, keep, 0

    def sample(self, h_enc: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z, mean, log_sigma = self.sampler.sample(h_enc, u)
        keep = self.keep[self.t]
        self.t += 1
        return torch.where(keep, z, u), mean, log_sigma


@torch.no_grad()
def kept_paths(model: DrawModel, x: Tensor, keep: Tensor, u: Tensor) -> Tensor:
    """sigma(c_T) (N, x_dim) of paths through x (N, x_dim) with the noise u (T, N, z_dim) in
    which only the coordinates keep (T, z_dim) come from Q, the encoder seeing the canvases the
    rest make (KeptCoordinates)."""
    sampler = model.sampler
    model.sampler = KeptCoordinates(sampler, keep)     # for the one unroll below; put back after
    try:
        c, *_ = model.unroll(x, u)
    finally:
        model.sampler = sampler
    return torch.sigmoid(c)


class MixturePrior(nn.Module):
    """p(z_t | h): a mixture of K Gaussians with diagonal covariances, whose log weights (K,),
    means and log scales (K, z_dim) an MLP computes from what it sees of the generation so far,
    h (`prior_input`: the decoder's state h_{t-1}^dec, by default)."""

    def __init__(self, input_dim: int, z_dim: int, hidden: int, components: int):
        super().__init__()
        self.z_dim, self.components = z_dim, components
        self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, components * (1 + 2 * z_dim)))

    def mixture(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log weights (B, K), means and log scales (B, K, z_dim) given h (B, input_dim)."""
        out = self.net(h)
        logits, rest = out.split([self.components, 2 * self.components * self.z_dim], dim=1)
        mean, log_scale = rest.view(len(h), self.components, 2, self.z_dim).unbind(2)
        return F.log_softmax(logits, dim=1), mean, log_scale.clamp(-6, 2)

    def log_prob(self, h: Tensor, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """log p(z | h) of each row (B,), z (B, z_dim). With `mask` (B, z_dim), the mixture
        models only the coordinates it marks, and the others are N(0, 1)'s."""
        log_weight, mean, log_scale = self.mixture(h)
        u = (z[:, None] - mean) * torch.exp(-log_scale)                       # (B, K, Z)
        log_normal = -0.5 * (u ** 2 + LOG_2PI) - log_scale                    # (B, K, Z)
        if mask is None:
            return torch.logsumexp(log_weight + log_normal.sum(dim=2), dim=1)
        mixed = torch.logsumexp(log_weight + (log_normal * mask[:, None]).sum(dim=2), dim=1)
        return mixed + standard_normal_log_prob(z * ~mask) + 0.5 * LOG_2PI * mask.sum(dim=1)

    def sample(self, h: Tensor, generator: torch.Generator, mask: Tensor | None = None
               ) -> Tensor:
        """One draw z (B, z_dim) given h (B, input_dim); with `mask` (B, z_dim), only the
        coordinates it marks from the mixture, the others from N(0, 1)."""
        log_weight, mean, log_scale = self.mixture(h)
        k = torch.multinomial(log_weight.exp(), 1, generator=generator)       # (B, 1)
        pick = k[:, :, None].expand(-1, 1, self.z_dim)
        noise = torch.randn(len(h), self.z_dim, generator=generator)
        z = (mean.gather(1, pick) + log_scale.gather(1, pick).exp() * noise[:, None])[:, 0]
        return z if mask is None else torch.where(mask, z, noise)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z ** 2 + LOG_2PI).sum(dim=-1)


def step_masks(keep: Tensor | None, images: int) -> Tensor | None:
    """keep (T, z_dim), the coordinates the mixture models at each step, for pairs flattened
    from (T, images, .): row t images + i is step t's: (T images, z_dim); None for None."""
    return None if keep is None else keep.repeat_interleave(images, dim=0)


def path_log_prob(prior: MixturePrior, states: Tensor, draws: Tensor,
                  keep: Tensor | None = None, batch: int = 4096) -> float:
    """The mean over images of log p(z_1..z_T) = sum_t log p(z_t | h_{t-1}^dec), given the
    paths' inputs (T, N, input_dim) and draws (T, N, z_dim); with keep (T, z_dim), the
    mixture models those coordinates and N(0, 1) the others."""
    T, N, _ = draws.shape
    h, z = states.flatten(0, 1), draws.flatten(0, 1)
    mask = step_masks(keep, N)
    with torch.no_grad():
        parts = [prior.log_prob(h[rows], z[rows], None if mask is None else mask[rows])
                 for rows in torch.arange(len(z)).split(batch)]
    return torch.cat(parts).sum().item() / N


def fit(prior: MixturePrior, train: tuple[Tensor, Tensor], held_out: tuple[Tensor, Tensor],
        epochs: int, lr: float, batch: int, generator: torch.Generator,
        keep: Tensor | None = None) -> list[float]:
    """Maximum likelihood by Adam over the pairs of all steps, shuffled together (with keep
    (T, z_dim): of the coordinates it marks at each step); keep the parameters of the pass
    whose held-out log p(z_1..z_T) is best. Return each pass's."""
    h, z = (v.flatten(0, 1) for v in train)                                 # (T N, .) each
    mask = step_masks(keep, train[1].shape[1])
    optimizer = torch.optim.Adam(prior.parameters(), lr=lr)
    best, best_state, curve = -math.inf, None, []
    for epoch in range(epochs):
        prior.train()
        for part in tqdm(torch.randperm(len(z), generator=generator).split(batch),
                         desc=f"prior pass {epoch + 1}", leave=False):
            loss = -prior.log_prob(h[part], z[part], None if mask is None else mask[part]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        prior.eval()
        curve.append(path_log_prob(prior, *held_out, keep))
        print(f"prior pass {epoch + 1}: held-out log p(z_1..z_T) {curve[-1]:.2f} nats")
        if curve[-1] > best:
            best, best_state = curve[-1], {k: v.clone() for k, v in prior.state_dict().items()}
    if best_state is None:
        raise DrawError("the prior's fit gave no finite held-out log-likelihood")
    prior.load_state_dict(best_state)
    return curve


@torch.no_grad()
def prior_samples(model: DrawModel, prior: MixturePrior, n: int, generator: torch.Generator,
                  condition: str = "state", keep: Tensor | None = None) -> Tensor:
    """sigma(c_T) of n samples (n, x_dim), z_t drawn from the prior given the decoder's state
    (with keep (T, z_dim): the coordinates it marks; the others from N(0, 1))."""
    cfg = model.config
    state = model.initial_state(n, next(model.parameters()))
    for t in range(model.n_iter):
        h = prior_input(state, condition, (cfg.channels, cfg.height, cfg.width))
        mask = None if keep is None else keep[t].expand(n, -1)
        state = model.decode(state, prior.sample(h, generator, mask))         # eqs. 7-8
    return torch.sigmoid(state.c)


def main(model_file: str, n: int = 10000, held_out: int = 2000, hidden: int = 512,
         components: int = 5, epochs: int = 6, condition: str = "state",
         active_only: bool = False, lr: float = 1e-3, batch: int = 1024, read: bool = False,
         samples: int = 2000, seed: int = 0, data_dir: str | None = None) -> dict[str, float | list[float]]:
    """Measures 1 and 2 of the docstring; return the held-out log-likelihoods and, with read,
    the reader's shares."""
    ckpt = load_checkpoint(model_file)
    model = build_model(ckpt, model_file).eval()
    cfg = model.config
    if read:
        reader_script.check_two_digit(model, model_file)
    if read and held_out < samples:
        raise DrawError(f"--read decodes --held-out's draws as samples: give at least "
                        f"--samples {samples} of them")
    run_info = ckpt.get("run") or {}
    _, train_images, _ = model_images(model_file, cfg, None, run_info, "train", n, seed,
                                      data_dir)
    _, valid_images, _ = model_images(model_file, cfg, None, run_info, "valid", held_out, seed,
                                      data_dir)
    mnist = reader_script.labelled_mnist(data_dir) if read else None     # before the work
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)                                                  # the MLP's start
    states, draws, variance = posterior_pairs(model, train_images, generator, condition)
    held_states, held_draws, _ = posterior_pairs(model, valid_images, generator, condition)
    T, count, Z = draws.shape
    print(f"{model_file}: posterior paths of {count} training and {held_draws.shape[1]} valid "
          f"images, one draw each")
    keep = (variance > prior_fit.ACTIVE).view(T, Z) if active_only else None
    prior = MixturePrior(condition_size(cfg, condition), Z, hidden, components)
    curve = fit(prior, (states, draws), (held_states, held_draws), epochs, lr, batch, generator,
                keep)
    normal = standard_normal_log_prob(held_draws).sum(dim=0).mean().item()
    print(f"held-out log p(z_1..z_T): N(0, I) {normal:.2f}, the fitted prior {max(curve):.2f} "
          f"nats (pass {curve.index(max(curve)) + 1})")
    result = {"normal": normal, "fitted": max(curve), "curve": curve}
    if read:
        active = (variance > prior_fit.ACTIVE).nonzero().squeeze(1)
        valid_x = next(batches(valid_images, len(valid_images)))
        result.update(read_all(model, prior, held_draws, active, valid_x, samples, generator,
                               seed, mnist, condition, keep))
    return result


def read_all(model: DrawModel, prior: MixturePrior, held_draws: Tensor, active: Tensor,
             valid_x: Tensor, samples: int, generator: torch.Generator, seed: int, mnist: Data,
             condition: str, modelled: Tensor | None) -> dict[str, float]:
    """The reader's share of two-digit canvases, and how far the mix of digits it reads is from
    the valid images' (bench/two_digit_reader.py's "digits off"), of: the valid images valid_x
    (N, x_dim); the held-out posterior draws (T, N, z_dim) decoded whole (reconstructions), and
    with only the `active` coordinates kept and the rest the noise u; the paths of `kept_paths`
    through valid_x with the same coordinates and noise, and with all coordinates of the first
    k steps (HANDOVERS); N(0, I) samples, the same u, and the same with u's coordinates other
    than the active ones at 0; and samples of the fitted prior (of the coordinates `modelled`
    (T, z_dim) marks, or all where None)."""
    u = torch.randn(model.noise_shape(samples), generator=generator)           # (T, n, Z)
    T, count, Z = u.shape
    is_active = torch.zeros(T * Z, dtype=torch.bool)                        # (T Z,)
    is_active[active] = True
    noise = prior_fit.flatten(u)                                             # (n, T Z)
    kept = torch.where(is_active, prior_fit.flatten(held_draws[:, :count]), noise)
    x = valid_x[:count]
    with torch.no_grad():
        canvases = {
            "valid images": x,
            "posterior draws (reconstructions)": model.sample(count, held_draws[:, :count])[-1],
            f"the same, only {len(active)} active coordinates kept":
                model.sample(count, prior_fit.unflatten(kept, T))[-1],
            "paths with those coordinates from Q, the encoder reacting":
                kept_paths(model, x, is_active.view(T, Z), u),
        }
        for k in HANDOVERS:
            if k >= T:
                continue
            first = torch.zeros(T, Z, dtype=torch.bool)
            first[:k] = True
            canvases[f"paths with z_1..z_{k} from Q, the rest N(0, I)"] = kept_paths(
                model, x, first, u)
        canvases["N(0, I)"] = model.sample(count, u)[-1]
        canvases["N(0, I) on the active coordinates, 0 on the rest"] = model.sample(
            count, prior_fit.unflatten(noise * is_active, T))[-1]
        canvases["the fitted prior"] = prior_samples(model, prior, count, generator, condition,
                                                     modelled)
    with torch.enable_grad():
        reader = reader_script.train_reader(mnist.train.numpy().reshape(-1, 28, 28),
                                            mnist.train_labels.long(),
                                            reader_script.READER_CANVASES,
                                            reader_script.READER_EPOCHS, seed)
    shares, data = {}, None
    for name, c in canvases.items():
        _, classes, probabilities = reader_script.read_two(reader, c.view(-1, 60, 60))
        read = reader_script.read_as_digits(classes, probabilities, reader_script.CONFIDENCE)
        mix = reader_script.digit_shares(classes, read)
        data = mix if data is None else data                 # the valid images' mix, first
        shares[name] = read.all(dim=1).float().mean().item()
        print(f"{name}: {shares[name]:.1%} of {count} read as two digits, digits off "
              f"{reader_script.total_variation(mix, data):.1%}")
    return shares


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_file", metavar="MODEL", help="a <name>_model.pkl")
    parser.add_argument("--n", type=positive, default=10000,
                        help="training images whose posterior paths the prior is fitted to")
    parser.add_argument("--held-out", type=positive, default=2000,
                        help="valid images whose paths score the fit (and are read)")
    parser.add_argument("--hidden", type=positive, default=512, help="the MLP's hidden units")
    parser.add_argument("--components", type=positive, default=5,
                        help="Gaussians in the mixture")
    parser.add_argument("--epochs", type=positive, default=6, help="passes over the pairs")
    parser.add_argument("--condition", choices=CONDITIONS, default="state",
                        help="what the prior sees: h_{t-1}^dec, with its cell, or with the "
                             "canvas (pooled)")
    parser.add_argument("--active-only", action="store_true",
                        help="the mixture models the active coordinates only, N(0, 1) the rest")
    parser.add_argument("--read", action="store_true",
                        help="read the samples (two-digit MNIST models)")
    parser.add_argument("--samples", type=positive, default=2000, help="canvases of each kind")
    parser.add_argument("--seed", type=seed_type, default=0,
                        help="seed of the subsets, the draws, the fit and the reader")
    parser.add_argument("--data-dir", default=None, help="where the converted datasets are")
    run(main, parser.parse_args())
