"""The DRAW model: its config, the model built from its bricks (draw/bricks.py), the bound.

References
----------
K. Gregor, I. Danihelka, A. Graves, D. J. Rezende, D. Wierstra.
"DRAW: A Recurrent Neural Network For Image Generation", ICML 2015, arXiv:1502.04623.
Equation numbers below are the paper's.

Choices the paper leaves open, made as in the classic Theano/Blocks repository unless said:
- Encoder and decoder are `nn.LSTMCell`s (eqs. 5 and 7): the projection folded in and no
  peepholes, the paper's "extended form with forget gates (Gers et al., 2000)"; the classic
  Blocks LSTM has peepholes.
- c_0, h_0^enc and h_0^dec are learned biases, as section 2.2 says (`learned_initial_state`;
  the classic repository and model files written before 2026-12-06 have them at zero). The
  LSTMs' cells start at zero: the paper does not name them.
- One write window is shared by all channels, as is the read window.
- P(Z_t) is N(0, I), as in the paper; `learned_prior` makes it N(m_t, s_t) given h_{t-1}^dec
  (draw/bricks.py, LearnedPrior), an option beyond the paper, off by default.
"""
import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from draw.bricks import (AttentionReader, AttentionWriter, LearnedPrior, Qsampler, Reader,
                         Writer)


class ConfigError(ValueError):
    """A bad value of a model's config, from flags or a model file (scripts name the flag)."""

    def __init__(self, config: object, field: str, problem: str):
        super().__init__(f"{type(config).__name__}.{field} {problem}")
        self.field, self.problem = field, problem


# a field's metadata key: the value that configs written before the field existed had
ABSENT = "absent"


class ModelConfigBase:
    """The base of DrawConfig and ClassifierConfig, and the one check of their sizes: each field
    a positive integer (or None where that is its default), the windows inside the image; a
    switch is True or False."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            if isinstance(f.default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(self, f.name, f"must be true or false, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(self, f.name, f"must be a positive integer, got {value!r}")
            # height and width are fields before the windows, so checked already
            H, W = self.height, self.width
            if f.name in ("read_N", "write_N") and value > min(H, W):
                raise ConfigError(self, f.name, f"must fit in the {H}x{W} image, got {value}")

    @property
    def x_dim(self) -> int:
        return self.channels * self.height * self.width

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        """The config of a dict from `to_dict`; a field added since the dict was written takes
        the value that its files had (`ABSENT`), not its default."""
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) - known:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(set(d) - known)}; "
                             f"known: {sorted(known)}")
        return cls(**{**{f.name: f.metadata[ABSENT] for f in dataclasses.fields(cls)
                         if ABSENT in f.metadata}, **d})


@dataclass(frozen=True)
class DrawConfig(ModelConfigBase):
    """Everything that defines a DRAW model's architecture; with a state_dict, a whole model."""
    channels: int = 1
    height: int = 28
    width: int = 28
    n_iter: int = 10
    enc_dim: int = 256
    dec_dim: int = 256
    z_dim: int = 100
    read_N: int | None = None     # None: read the whole image (no attention)
    write_N: int | None = None    # None: write the whole image (no attention)
    # c_0, h_0^enc, h_0^dec learned (section 2.2); False: zero, as every file before this field
    learned_initial_state: bool = dataclasses.field(default=True, metadata={ABSENT: False})
    # P(Z_t | h_{t-1}^dec) learned (LearnedPrior), beyond the paper; False: N(0, I), the paper's
    learned_prior: bool = dataclasses.field(default=False, metadata={ABSENT: False})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class DrawState(NamedTuple):
    """What one glimpse hands to the next: the t-1 quantities of eqs. 3-8."""
    c: Tensor              # (B, x_dim)    canvas c_{t-1}: logits
    h_enc: Tensor          # (B, enc_dim)  h_{t-1}^enc
    cell_enc: Tensor       # (B, enc_dim)  the encoder LSTM's cell state
    h_dec: Tensor          # (B, dec_dim)  h_{t-1}^dec
    cell_dec: Tensor       # (B, dec_dim)  the decoder LSTM's cell state


class DrawModel(nn.Module):
    """DRAW (eqs. 3-8), built from its bricks.

    `step` is one glimpse and `decode` its generative half; everything that trains, evaluates
    or samples loops over them, so a replaced brick or an overridden `step` changes it all.

    Parameters
    ----------
    n_iter : int
        Number of glimpses T.
    reader : Reader or AttentionReader
    encoder : nn.LSTMCell
        RNN^enc, input size reader.read_dim + dec_dim.
    sampler : Qsampler
    decoder : nn.LSTMCell
        RNN^dec, input size z_dim.
    writer : Writer or AttentionWriter
    learned_initial_state : bool, keyword only
        c_0, h_0^enc and h_0^dec are parameters (section 2.2), zero at first; else zero.
    prior : LearnedPrior, optional, keyword only
        P(Z_t | h_{t-1}^dec), which maps z'_t to the decoder's input z_t; None: N(0, I), the
        paper's prior, and z_t = z'_t.
    """

    def __init__(self, n_iter: int, reader: nn.Module, encoder: nn.LSTMCell, sampler: Qsampler,
                 decoder: nn.LSTMCell, writer: nn.Module, *, learned_initial_state: bool,
                 prior: LearnedPrior | None = None):
        super().__init__()
        self.n_iter = n_iter
        self.reader = reader
        self.encoder = encoder
        self.sampler = sampler
        self.decoder = decoder
        self.writer = writer
        # the last part, so its parameters come last, as `learn_prior` adds them: the
        # optimizer's state in a checkpoint is by position
        self.prior = prior
        self.config: DrawConfig | None = None
        self.glimpses_per_call: int | None = None     # None: all T in one call of `glimpses`
        self.learned_initial_state = False
        if learned_initial_state:
            self.learn_initial_state()
        # every part but the prior, which starts as given (LearnedPrior: at N(0, I)): the
        # others draw what a paper model's of the same seed do, and leave the same random state
        for child in self.children():
            if child is not prior:
                child.apply(self._init_weights)

    @classmethod
    def from_config(cls, cfg: DrawConfig) -> "DrawModel":
        C, H, W = cfg.channels, cfg.height, cfg.width
        if cfg.read_N is None:
            reader = Reader(cfg.x_dim)
        else:
            reader = AttentionReader(cfg.x_dim, cfg.dec_dim, C, H, W, cfg.read_N)
        if cfg.write_N is None:
            writer = Writer(cfg.dec_dim, cfg.x_dim)
        else:
            writer = AttentionWriter(cfg.dec_dim, C, H, W, cfg.write_N)
        model = cls(cfg.n_iter, reader,
                    nn.LSTMCell(reader.read_dim + cfg.dec_dim, cfg.enc_dim),
                    Qsampler(cfg.enc_dim, cfg.z_dim),
                    nn.LSTMCell(cfg.z_dim, cfg.dec_dim),
                    writer, learned_initial_state=cfg.learned_initial_state,
                    prior=LearnedPrior(cfg.dec_dim, cfg.z_dim) if cfg.learned_prior else None)
        model.config = cfg
        return model

    def learn_initial_state(self) -> Self:
        """Make c_0, h_0^enc and h_0^dec parameters (section 2.2), in place, at zero: the values
        a zero initial state has, so the model computes what it did, and training moves them
        on (train-draw.py --oldmodel with a file written without them). Returns the model."""
        if not self.learned_initial_state:
            like = next(self.parameters())
            for name, size in (("c_0", self.writer.x_dim), ("h_0_enc", self.encoder.hidden_size),
                               ("h_0_dec", self.decoder.hidden_size)):
                setattr(self, name, nn.Parameter(like.new_zeros(size)))     # (size,) each
            self.learned_initial_state = True
            if self.config is not None:
                self.config = dataclasses.replace(self.config, learned_initial_state=True)
        return self

    def learn_prior(self) -> Self:
        """Give the model a LearnedPrior, in place, at N(0, I): the model computes what it did,
        and training moves the prior on (train-draw.py --oldmodel with a file written without
        one, --learned-prior). Returns the model."""
        if self.prior is None:
            like = next(self.parameters())
            self.prior = LearnedPrior(self.decoder.hidden_size, self.sampler.z_dim).to(like)
            if self.config is not None:
                self.config = dataclasses.replace(self.config, learned_prior=True)
        return self

    @staticmethod
    def _init_weights(module: nn.Module):
        """The classic repository's IsotropicGaussian(0.01) weights and zero biases, but three
        biases that let attention models learn (doc/development.md, "the initialisation").
        `apply` visits children first, so the brick cases override their Linear's defaults."""
        for name, p in module.named_parameters(recurse=False):
            if name.startswith("weight"):
                nn.init.normal_(p, mean=0.0, std=0.01)
            elif name.startswith("bias"):
                nn.init.zeros_(p)
        with torch.no_grad():
            if isinstance(module, nn.LSTMCell):
                # Forget-gate bias 1 (Gers et al., 2000; Jozefowicz et al., 2015): the cells keep
                # their state across the T steps from the start instead of halving it each step
                H = module.hidden_size
                module.bias_ih[H:2 * H] = 1.0                 # gates are ordered (i, f, g, o)
            elif isinstance(module, (AttentionReader, AttentionWriter)):
                module.reset_window()         # the bricks own their first windows

    def window_parameters(self) -> list[nn.Parameter]:
        """The parameters of the attention heads that choose the windows (eq. 21): the read
        head's and the write head's, where the model has them; not the write patch (eq. 28)."""
        heads = [self.reader.readout] if isinstance(self.reader, AttentionReader) else []
        if isinstance(self.writer, AttentionWriter):
            heads.append(self.writer.z_trafo)
        return [p for head in heads for p in head.parameters()]

    def noise_shape(self, batch: int) -> tuple[int, int, int]:
        """Shape of the noise u that `forward`, `log_weight` and `sample` take: (n_iter, B, z_dim)."""
        return (self.n_iter, batch, self.sampler.z_dim)

    def noise(self, batch: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Fresh N(0, I) noise u (n_iter, batch, z_dim), in `like`'s dtype and device, from
        `generator` or the global one: the one place DRAW's noise is drawn."""
        return torch.randn(self.noise_shape(batch), generator=generator, dtype=like.dtype,
                           device=like.device)

    def _given_or_fresh_noise(self, u: Tensor | None, batch: int, like: Tensor) -> Tensor:
        if u is None:
            return self.noise(batch, like)
        if tuple(u.shape) != self.noise_shape(batch):
            raise ValueError(f"noise u must have shape (n_iter, batch, z_dim) = "
                             f"{self.noise_shape(batch)}, got {tuple(u.shape)}")
        return u

    def initial_state(self, batch: int, like: Tensor) -> DrawState:
        """c_0, h_0^enc and h_0^dec, the learned biases of section 2.2 (or zero), for each of
        `batch` images, and the LSTMs' cells at zero, in `like`'s dtype and device."""
        cell_enc = like.new_zeros(batch, self.encoder.hidden_size)
        cell_dec = like.new_zeros(batch, self.decoder.hidden_size)
        if not self.learned_initial_state:
            return DrawState(like.new_zeros(batch, self.writer.x_dim), torch.zeros_like(cell_enc),
                             cell_enc, torch.zeros_like(cell_dec), cell_dec)
        # contiguous, as every later state is, so that compiled glimpses do not add a graph
        c, h_enc, h_dec = (p.to(like.dtype).expand(batch, -1).contiguous()
                           for p in (self.c_0, self.h_0_enc, self.h_0_dec))
        return DrawState(c, h_enc, cell_enc, h_dec, cell_dec)

    def step(self, state: DrawState, x: Tensor, u: Tensor,
             x_gates: tuple[Tensor, Tensor] | None = None
             ) -> tuple[DrawState, Tensor, Tensor, Tensor]:
        """One glimpse t of eqs. 3-8: read, encode, sample, decode, write.

        Parameters
        ----------
        state : DrawState, the t-1 quantities
        x : Tensor, shape (B, x_dim)
        u : Tensor, shape (B, z_dim), the standard normal noise of step t
        x_gates : (Tensor, Tensor), optional
            Without attention, `encoder_x_gates(x)`: the same at every glimpse (eq. 17).

        Returns
        -------
        state : DrawState, the quantities of step t
        z, mean, log_sigma : Tensor, each (B, z_dim)
            The sample z_t and the posterior Q(Z_t | h_t^enc) it came from (with a learned
            prior, z'_t and its posterior).
        """
        x_hat = x - torch.sigmoid(state.c)                                    # eq. 3
        if x_gates is None:
            r = self.reader(x, x_hat, state.h_dec)                            # eq. 4
            h_enc, cell_enc = self.encoder(torch.cat([r, state.h_dec], dim=1),
                                           (state.h_enc, state.cell_enc))     # eq. 5
        else:
            # eqs. 17 and 5 with the x part of the encoder's input product given: the rest of
            # the read, [x_hat], and h_dec through the remaining columns of the same weight
            x_part, rest = x_gates                                  # (B, 4E), (4E, x_dim + D)
            gates = (x_part + F.linear(torch.cat([x_hat, state.h_dec], dim=1), rest)
                     + F.linear(state.h_enc, self.encoder.weight_hh, self.encoder.bias_hh))
            h_enc, cell_enc = lstm_cell(gates, state.cell_enc)                # eq. 5
        z, mean, log_sigma = self.sampler.sample(h_enc, u)                    # eq. 6
        state = self.decode(state._replace(h_enc=h_enc, cell_enc=cell_enc), z)  # eqs. 7-8
        return state, z, mean, log_sigma

    def decode(self, state: DrawState, z: Tensor) -> DrawState:
        """The generative half of a glimpse (eqs. 7-8), which is all that sampling runs: z (B,
        z_dim) into the decoder, its output written onto the canvas. With a learned prior, z is
        z'_t, and the decoder's input is the prior's m_t + s_t z'_t."""
        if self.prior is not None:
            z = self.prior(state.h_dec, z)                  # P(Z_t | h_{t-1}^dec), LearnedPrior
        h_dec, cell_dec = self.decoder(z, (state.h_dec, state.cell_dec))      # eq. 7
        c = state.c + self.writer(h_dec)                                      # eq. 8
        return state._replace(c=c, h_dec=h_dec, cell_dec=cell_dec)

    def encoder_x_gates(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """Without attention, the part of the encoder's input product (eq. 5) that x itself
        makes, (B, 4 enc_dim), and the weight's other columns, (4 enc_dim, x_dim + dec_dim):
        the read hands the encoder x whole at every glimpse (eq. 17), so that part is the same
        at all T of them, and computed once it saves T - 1 products of x with a quarter of the
        step's weights. (The columns are cut once too: each cut of a parameter costs autograd
        a gradient of the whole weight.) None for any other reader, a subclass of Reader too:
        its own maths must run at every glimpse."""
        if type(self.reader) is not Reader:
            return None
        weight = self.encoder.weight_ih                                     # (4E, 2 x_dim + D)
        return (F.linear(x, weight[:, :x.shape[1]], self.encoder.bias_ih),
                weight[:, x.shape[1]:])

    def glimpses(self, state: DrawState, x: Tensor, u: Tensor
                 ) -> tuple[DrawState, Tensor, Tensor, Tensor]:
        """`step` once per row of the noise u (k, B, z_dim): the state after them and z, mean,
        log_sigma, each (k, B, z_dim). What draw.fast_path.compile_glimpses compiles."""
        posterior = []
        x_gates = self.encoder_x_gates(x)
        for u_t in u.unbind(0):
            state, *z_mean_log_sigma = self.step(state, x, u_t, x_gates)
            posterior.append(z_mean_log_sigma)
        return state, *(torch.stack(v) for v in zip(*posterior))            # (k, B, Z) each

    def unroll(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All T glimpses of x. Returns c_T (B, x_dim) and z, mean, log_sigma (T, B, z_dim)."""
        state = self.initial_state(x.shape[0], x)
        per_call = self.glimpses_per_call or self.n_iter
        parts = []
        for start in range(0, self.n_iter, per_call):
            state, *z_mean_log_sigma = self.glimpses(state, x, u[start:start + per_call])
            parts.append(z_mean_log_sigma)
        if len(parts) == 1:
            return state.c, *parts[0]
        z, mean, log_sigma = (torch.cat(v) for v in zip(*parts))             # (T, B, Z) each
        return state.c, z, mean, log_sigma

    def forward(self, x: Tensor, u: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode and reconstruct a batch.

        Parameters
        ----------
        x : Tensor, shape (B, x_dim), values in [0, 1]
        u : Tensor, shape (n_iter, B, z_dim), optional
            Standard Gaussian noise for the reparameterised samples; drawn when omitted.

        Returns
        -------
        c : Tensor, shape (B, x_dim)
            The final canvas c_T: logits of the Bernoulli means.
        kl : Tensor, shape (n_iter, B)
            KL(Q(Z_t|h_t^enc) || P(Z_t)) of every step (eq. 11, before the sum over t).
        """
        c, _, mean, log_sigma = self.unroll(x, self._given_or_fresh_noise(u, x.shape[0], x))
        # under bfloat16 autocast the posterior's maps return bfloat16; the KL sums in float32
        mean, log_sigma = mean.to(x.dtype), log_sigma.to(x.dtype)            # (T, B, Z) each
        return c, self.sampler.kl(mean, log_sigma)                            # eq. 11, all t at once

    def log_weight(self, x: Tensor, u: Tensor | None = None) -> Tensor:
        """log P(x, z) - log Q(z | x) at one posterior sample z, per example: shape (B,).

        Its expectation over u is minus the bound of `nll_bound`; the log-mean-exp of K of them
        is the importance-sampled estimate of log P(x) (Burda et al., 2016).
        """
        u = self._given_or_fresh_noise(u, x.shape[0], x)
        c, z, _, log_sigma = self.unroll(x, u)
        return -reconstruction_loss(x, c) - self.sampler.log_ratio(z, u, log_sigma).sum(dim=0)

    @torch.no_grad()
    def sample(self, n: int, u: Tensor | None = None, return_attention: bool = False):
        """Generate n images (section 2.3): z_t ~ P(Z_t) (a learned prior's P(Z_t | h_{t-1}^dec)),
        decode, write.

        Parameters
        ----------
        n : int
        u : Tensor, shape (n_iter, n, z_dim), optional
            The prior samples z_t themselves (with a learned prior, its standard normal z'_t);
            drawn when omitted.
        return_attention : bool
            Also return the write window of every step (attention writers only).

        Returns
        -------
        canvases : Tensor, shape (n_iter, n, x_dim)
            sigma(c_t) after every step t = 1..T.
        attention : dict of Tensor, each of shape (n_iter, n), only with return_attention
            'center_y', 'center_x', 'delta', 'sigma', 'gamma' of the write window.
        """
        if return_attention and not isinstance(self.writer, AttentionWriter):
            raise ValueError("return_attention needs a model with write attention (write_N)")
        p = next(self.parameters())
        z = self._given_or_fresh_noise(u, n, p)
        state = self.initial_state(n, p)
        canvases, windows = [], []
        for t in range(self.n_iter):
            state = self.decode(state, z[t])                                  # eqs. 7-8
            canvases.append(torch.sigmoid(state.c))
            if return_attention:
                centre, *rest = self.writer.window(state.h_dec)
                windows.append(torch.stack([*centre.unbind(1), *rest]))       # (5, n)
        canvases = torch.stack(canvases)                                      # (T, n, x_dim)
        if not return_attention:
            return canvases
        windows = torch.stack(windows, dim=1)                                 # (5, T, n)
        names = ("center_y", "center_x", "delta", "sigma", "gamma")
        return canvases, dict(zip(names, windows.unbind(0)))


def lstm_cell(gates: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
    """nn.LSTMCell's update from its gates' pre-activations (B, 4H), in its order (i, f, g, o),
    and the previous cell (B, H): the new output and cell, each (B, H)."""
    i, f, g, o = gates.chunk(4, dim=1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


def reconstruction_loss(x: Tensor, c: Tensor) -> Tensor:
    """L^x = -log D(x | c_T) (eq. 9): Bernoulli cross-entropy of x under sigmoid(c_T), summed over
    pixels, computed from the logits for stability. Shape (B,), nats."""
    return F.binary_cross_entropy_with_logits(c, x, reduction="none").sum(dim=1)


def nll_bound(x: Tensor, c: Tensor, kl: Tensor) -> Tensor:
    """The negative variational bound L = L^x + L^z (eq. 12) per image, in nats: shape (B,).

    Parameters
    ----------
    x : Tensor, shape (B, x_dim)
    c : Tensor, shape (B, x_dim), the final canvas logits c_T
    kl : Tensor, shape (n_iter, B), per-step KL terms (eq. 11)
    """
    return reconstruction_loss(x, c) + kl.sum(dim=0)

