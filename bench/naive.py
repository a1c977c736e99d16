"""A naive port of DRAW, the paper's equations typed into PyTorch: the reference for speed.

Gregor, Danihelka, Graves, Rezende, Wierstra, "DRAW: A Recurrent Neural Network For Image
Generation", ICML 2015, arXiv:1502.04623; the equation numbers below are the paper's.

This is what the speed of the `draw` package is measured against (issue 22: "2.5x the naive
port"), so it is written as a researcher would first write it from the paper, on purpose
without any of the package's work on speed: one file, `nn.LSTMCell`s, the filterbanks of eqs.
19-26 built directly from their exponentials in every glimpse, float32, no fusion, no
compilation, PyTorch's default (unfused) Adam. It imports nothing from `draw`.

It is the same model as `draw.model.DrawModel` with attention on both heads (one channel):
`load_draw_state` copies a DrawModel's parameters into it, and tests/test_naive_port.py checks
that the two then give the same loss and gradients for the same noise: with EPS = 0 to float64
rounding (1e-15), as the port stands to 1e-7 in float64 and float32 rounding in float32. Where
the two compute differently (rounding aside):

- The filterbank's normaliser (eqs. 25-26): here exp(...) / (Z + EPS), as a direct port guards
  the division; DrawModel takes a softmax over the pixels, which needs no epsilon. A filter's
  weights differ by the factor Z / (Z + EPS), a relative EPS / (Z + EPS). Whenever the
  filter's centre mu lies on the image and sigma >= 0.5 px, Z >= exp(-1/2) (the nearest pixel
  is at most half a pixel away), so the difference is below 1.6e-8, under float32's rounding
  (6e-8). It is about 3e-5 for a filter whose centre is 4 sigma outside the image, 3e-3 at 5
  sigma and 0.4 at 6 sigma, where this port's weights fall towards 0 while DrawModel's stay
  normalised onto the nearest pixels.
- DrawModel sets filter weights below 2.3e-13 of their row's largest to exactly 0 (float32; so
  that no denormal float is made); here they are computed, denormals included, as a direct
  port computes them. A row's sum changes by a relative 28 x 2.3e-13 at most.
- The reconstruction term (eq. 9) here is the binary cross-entropy of sigmoid(c_T), which
  PyTorch clamps at log(p) >= -100; DrawModel computes it from the logits c_T. The two differ
  only where sigmoid(c_T) rounds to 0 or 1 (|c_T| above about 17 in float32).
- The training step here is the bound's backward pass, clipping the gradient norm at 10 (as
  the classic Blocks run and this package's runs do) and Adam: no monitoring sums, no step norm
  and no finiteness check, which the package's MainLoop.step adds.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# guards eqs. 25-26's division for windows far outside the image, where Z underflows to 0
EPS = 1e-8

# the order in which eq. 21 lists the attention parameters
PAPER_ORDER = ("g_X", "g_Y", "log_sigma2", "log_delta", "log_gamma")
# the order of the columns of DrawModel's attention heads (ZoomableAttentionWindow.nn2att)
DRAW_ORDER = ("g_Y", "g_X", "log_delta", "log_sigma2", "log_gamma")


class NaiveDraw(nn.Module):
    """DRAW with read and write attention on one-channel A x B images (width A, height B, the
    paper's names).

    Parameters
    ----------
    T : int
        Glimpses.
    A, B : int
        Image width and height.
    read_N, write_N : int
        Read and write grid sizes, at least 2 (eq. 24 divides by N - 1).
    enc_dim, dec_dim, z_dim : int
        Encoder and decoder LSTM sizes and the latent size.
    learned_initial_state : bool
        c_0, h_0^enc, h_0^dec learned (section 2.2), or zero.
    """

    def __init__(self, T: int, A: int, B: int, read_N: int, write_N: int, enc_dim: int,
                 dec_dim: int, z_dim: int, learned_initial_state: bool = True):
        super().__init__()
        if min(read_N, write_N) < 2:
            raise ValueError(f"read_N and write_N must be at least 2, got {read_N}, {write_N}")
        self.T, self.A, self.B = T, A, B
        self.read_N, self.write_N = read_N, write_N
        self.encoder = nn.LSTMCell(2 * read_N ** 2 + dec_dim, enc_dim)        # eq. 5
        self.decoder = nn.LSTMCell(z_dim, dec_dim)                            # eq. 7
        self.mu = nn.Linear(enc_dim, z_dim)                                   # eq. 1
        self.log_sigma = nn.Linear(enc_dim, z_dim)                            # eq. 2
        self.read_attention = nn.Linear(dec_dim, 5)                           # eq. 21
        self.write_attention = nn.Linear(dec_dim, 5)                          # eq. 21, write's own
        self.write_patch = nn.Linear(dec_dim, write_N ** 2)                   # eq. 28
        # section 2.2: "c_0, h_0^enc, h_0^dec are initialised to learned biases"; or zeros that
        # do not train, as DrawModel's learned_initial_state=False
        for name, size in (("c_0", A * B), ("h_0_enc", enc_dim), ("h_0_dec", dec_dim)):
            if learned_initial_state:
                setattr(self, name, nn.Parameter(torch.zeros(size)))
            else:
                self.register_buffer(name, torch.zeros(size))

    @classmethod
    def from_config(cls, cfg) -> "NaiveDraw":
        """The port of the shapes of a draw DrawConfig (or anything with its fields)."""
        if cfg.channels != 1 or cfg.read_N is None or cfg.write_N is None:
            raise ValueError("the naive port has one channel and attention on both heads; got "
                             f"channels={cfg.channels}, read_N={cfg.read_N}, "
                             f"write_N={cfg.write_N}")
        if getattr(cfg, "learned_prior", False):
            raise ValueError("the naive port has the paper's N(0, I) prior, not learned_prior")
        return cls(cfg.n_iter, cfg.width, cfg.height, cfg.read_N, cfg.write_N, cfg.enc_dim,
                   # a config from before the field (an older tree's) had a zero start
                   cfg.dec_dim, cfg.z_dim, getattr(cfg, "learned_initial_state", False))

    def attention_parameters(self, linear: nn.Linear, h_dec: Tensor, N: int):
        """Eqs. 21-24: the grid centre, stride, variance and intensity, each (batch, 1)."""
        g_X_, g_Y_, log_sigma2, log_delta_, log_gamma = linear(h_dec).split(1, dim=1)  # eq. 21
        g_X = (self.A + 1) / 2 * (g_X_ + 1)                                   # eq. 22
        g_Y = (self.B + 1) / 2 * (g_Y_ + 1)                                   # eq. 23
        delta = (max(self.A, self.B) - 1) / (N - 1) * torch.exp(log_delta_)   # eq. 24
        return g_X, g_Y, delta, torch.exp(log_sigma2), torch.exp(log_gamma)

    def filterbank(self, g_X: Tensor, g_Y: Tensor, delta: Tensor, sigma2: Tensor, N: int):
        """Eqs. 19-20 and 25-26: F_X (batch, N, A) and F_Y (batch, N, B).

        Pixel coordinates a = 1..A and b = 1..B: with them eqs. 22-23 put g~ = 0 on the
        image's centre, (A + 1) / 2."""
        i = torch.arange(1, N + 1, dtype=g_X.dtype, device=g_X.device)
        mu_X = g_X + (i - N / 2 - 0.5) * delta                                # eq. 19, (batch, N)
        mu_Y = g_Y + (i - N / 2 - 0.5) * delta                                # eq. 20, (batch, N)
        a = torch.arange(1, self.A + 1, dtype=g_X.dtype, device=g_X.device)
        b = torch.arange(1, self.B + 1, dtype=g_X.dtype, device=g_X.device)
        s = 2 * sigma2[:, :, None]                                            # (batch, 1, 1)
        F_X = torch.exp(-(a - mu_X[:, :, None]) ** 2 / s)                 # eq. 25, (batch, N, A)
        F_Y = torch.exp(-(b - mu_Y[:, :, None]) ** 2 / s)                 # eq. 26, (batch, N, B)
        F_X = F_X / (F_X.sum(dim=2, keepdim=True) + EPS)                      # Z_X
        F_Y = F_Y / (F_Y.sum(dim=2, keepdim=True) + EPS)                      # Z_Y
        return F_X, F_Y

    def read(self, x: Tensor, x_hat: Tensor, h_dec_prev: Tensor) -> Tensor:
        """Eq. 27: gamma [F_Y x F_X^T, F_Y x_hat F_X^T], (batch, 2 N^2)."""
        N = self.read_N
        g_X, g_Y, delta, sigma2, gamma = self.attention_parameters(self.read_attention,
                                                                   h_dec_prev, N)
        F_X, F_Y = self.filterbank(g_X, g_Y, delta, sigma2, N)
        image = x.view(-1, self.B, self.A)                                    # (batch, B, A)
        error = x_hat.view(-1, self.B, self.A)
        glimpse_x = F_Y @ image @ F_X.transpose(1, 2)                         # (batch, N, N)
        glimpse_x_hat = F_Y @ error @ F_X.transpose(1, 2)                     # (batch, N, N)
        return gamma * torch.cat([glimpse_x.flatten(1), glimpse_x_hat.flatten(1)], dim=1)

    def write(self, h_dec: Tensor) -> Tensor:
        """Eqs. 28-29: (1 / gamma^) F^_Y^T w F^_X, (batch, B*A)."""
        N = self.write_N
        w = self.write_patch(h_dec).view(-1, N, N)                        # eq. 28, (batch, N, N)
        g_X, g_Y, delta, sigma2, gamma = self.attention_parameters(self.write_attention,
                                                                   h_dec, N)
        F_X, F_Y = self.filterbank(g_X, g_Y, delta, sigma2, N)
        patch = F_Y.transpose(1, 2) @ w @ F_X                                 # (batch, B, A)
        return patch.flatten(1) / gamma                                       # eq. 29

    def forward(self, x: Tensor, u: Tensor | None = None) -> Tensor:
        """The bound L = L^x + L^z (eq. 12), averaged over the batch.

        Parameters
        ----------
        x : Tensor, shape (batch, B*A), binary images
        u : Tensor, shape (T, batch, z_dim), optional
            The standard normal noise of the samples z_t (eq. 6); drawn step by step when
            omitted.
        """
        batch = x.shape[0]
        c = self.c_0.expand(batch, -1)                                        # c_0
        h_enc = self.h_0_enc.expand(batch, -1)
        cell_enc = x.new_zeros(batch, self.encoder.hidden_size)
        h_dec = self.h_0_dec.expand(batch, -1)
        cell_dec = x.new_zeros(batch, self.decoder.hidden_size)
        kl = 0
        for t in range(self.T):
            x_hat = x - torch.sigmoid(c)                                      # eq. 3
            r = self.read(x, x_hat, h_dec)                                    # eq. 4
            h_enc, cell_enc = self.encoder(torch.cat([r, h_dec], dim=1),
                                           (h_enc, cell_enc))                 # eq. 5
            mu = self.mu(h_enc)                                           # eq. 1, (batch, z_dim)
            log_sigma = self.log_sigma(h_enc)                                 # eq. 2
            sigma = torch.exp(log_sigma)
            noise = torch.randn_like(mu) if u is None else u[t]
            z = mu + sigma * noise                                        # eq. 6, reparameterised
            h_dec, cell_dec = self.decoder(z, (h_dec, cell_dec))              # eq. 7
            c = c + self.write(h_dec)                                         # eq. 8
            # eq. 11's summand, 1/2 (mu^2 + sigma^2 - log sigma^2 - 1) per latent unit
            kl = kl + 0.5 * (mu ** 2 + sigma ** 2 - 2 * log_sigma - 1).sum(dim=1)
        # eq. 9: -log D(x | c_T), D Bernoulli with means sigmoid(c_T)
        L_x = F.binary_cross_entropy(torch.sigmoid(c), x, reduction="none").sum(dim=1)
        return (L_x + kl).mean()                                              # eqs. 10, 12


def load_draw_state(port: NaiveDraw, state: dict[str, Tensor]) -> None:
    """Copy a DrawModel's state_dict (read and write attention, one channel) into the port.

    Every parameter has the same layout in both except the attention heads' 5 outputs, whose
    order here is eq. 21's (PAPER_ORDER) and there the classic repository's (DRAW_ORDER). A
    DrawModel without the learned initial state (`learned_initial_state=False`) gives zeros.
    """
    rows = [DRAW_ORDER.index(name) for name in PAPER_ORDER]
    names = {"encoder": "encoder", "decoder": "decoder", "mu": "sampler.mean_transform",
             "log_sigma": "sampler.log_sigma_transform", "read_attention": "reader.readout",
             "write_attention": "writer.z_trafo", "write_patch": "writer.w_trafo"}
    mapped = {}
    for name, tensor in port.state_dict().items():
        if "." not in name:         # the initial state; a model without it started at zero
            mapped[name] = state.get(name, torch.zeros_like(tensor))
            continue
        module, param = name.split(".")
        value = state[f"{names[module]}.{param}"]
        if module.endswith("_attention"):
            value = value[rows]
        if value.shape != tensor.shape:
            raise ValueError(f"{name}: the DrawModel's {tuple(value.shape)} does not fit the "
                             f"port's {tuple(tensor.shape)}")
        mapped[name] = value
    port.load_state_dict(mapped)


def training_step(port: NaiveDraw, x: Tensor):
    """One training step on the batch x (batch, B*A): the bound's gradient, clipped at norm 10,
    then PyTorch's default Adam (lr 1e-3). Returns the step as a function of no arguments."""
    optimizer = torch.optim.Adam(port.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad()
        loss = port(x)
        loss.backward()
        nn.utils.clip_grad_norm_(port.parameters(), 10.0)
        optimizer.step()
    return step
