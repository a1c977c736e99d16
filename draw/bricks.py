"""DRAW's bricks: read (eqs. 17, 27), the approximate posterior (eqs. 1-2, 11), write (eqs. 18,
28-29), the bias that starts an attention head with a window tiling the image, and a learned
prior, an option beyond the paper.

Each brick is an `nn.Module` with explicit scalar arguments; `DrawModel` (draw/model.py) takes
them as parts, so a researcher can replace one (any module with the same call signature).
Equation numbers are those of Gregor et al., "DRAW: A Recurrent Neural Network For Image
Generation", ICML 2015, arXiv:1502.04623.
"""
import math

import torch
from torch import Tensor, nn

from draw.attention import ZoomableAttentionWindow


def spanning_window_bias(zoomer: ZoomableAttentionWindow, sigma_per_delta: float,
                         gamma_power: float) -> Tensor:
    """The bias of an attention head (eq. 21) whose window's grid tiles the whole image: centred,
    stride delta = max(H, W) / N, each filter in the middle of its delta x delta cell. While a
    head's weights are small its window is its bias (exactly, at h_0^dec = 0).

    Parameters
    ----------
    zoomer : ZoomableAttentionWindow
        The head's filterbank; its `nn2att` defines the parameterisation (eqs. 22-24).
    sigma_per_delta : float
        sigma / delta. At 1/2 the filters overlap into an even cover (every pixel weighed
        within 10 per cent of 1 / delta but the outermost two rows and columns); less leaves gaps.
    gamma_power : float
        gamma = delta ** gamma_power: -2 for a writer (eq. 29 divides by gamma, so a unit patch
        adds 1 per pixel on average), 0 for a reader (eq. 27: a weighted mean of pixels).

    Returns
    -------
    Tensor, shape (5,)
        (g~_Y, g~_X, log delta~, log sigma^2, log gamma), the columns of `nn2att`.
    """
    delta = max(zoomer.img_height, zoomer.img_width) / zoomer.N
    # on the CPU whatever the default device: a model built on the meta device gets it too;
    # unit is delta at delta~ = 1
    unit = zoomer.nn2att(torch.zeros(1, 5, dtype=torch.float64, device="cpu"))[2].item()
    return torch.tensor([0.0, 0.0, math.log(delta / unit),
                         2 * math.log(sigma_per_delta * delta), gamma_power * math.log(delta)],
                        device="cpu")


class Reader(nn.Module):
    """read without attention (eq. 17): the image and the error image, whole."""

    def __init__(self, x_dim: int):
        super().__init__()
        self.read_dim = 2 * x_dim

    def forward(self, x: Tensor, x_hat: Tensor, h_dec: Tensor) -> Tensor:
        return torch.cat([x, x_hat], dim=1)                                   # (B, 2*x_dim)


class AttentionReader(nn.Module):
    """read with attention (eq. 27): gamma [F_Y x F_X^T, F_Y x_hat F_X^T].

    Its first window tiles the image (`reset_window`): the classic zero bias puts a 2x2 window's
    filters on the four blank corner pixels of MNIST, so the encoder saw nothing of x at first.
    sigma = delta / 4 is sharper than an even cover, whose glimpse hardly changes as the window
    moves (doc/development.md).
    """
    window_bias = (1 / 4, 0.0)        # sigma / delta and gamma's power of delta

    def __init__(self, x_dim: int, dec_dim: int, channels: int, height: int, width: int, N: int):
        super().__init__()
        self.x_dim, self.channels, self.N = x_dim, channels, N
        self.read_dim = 2 * channels * N * N
        self.zoomer = ZoomableAttentionWindow(channels, height, width, N)
        self.readout = nn.Linear(dec_dim, 5)                                  # eq. 21

    def forward(self, x: Tensor, x_hat: Tensor, h_dec: Tensor) -> Tensor:
        centre, delta, sigma, gamma = self.zoomer.window(self.readout(h_dec))  # eqs. 21-24
        filterbank = self.zoomer.filterbank(centre, delta, sigma)
        # x and x_hat read one at a time through the one filterbank, not as one image of 2C
        # channels: x needs no gradient, so autograd computes none for its half
        glimpses = torch.cat([self.zoomer.read_through(filterbank, x),
                              self.zoomer.read_through(filterbank, x_hat)], dim=1)
        return gamma[:, None] * glimpses                                      # (B, 2*C*N*N)

    @torch.no_grad()
    def reset_window(self) -> None:
        """Set the window's bias to the one that tiles the image, after the generic init."""
        self.readout.bias.copy_(spanning_window_bias(self.zoomer, *self.window_bias))


class Writer(nn.Module):
    """write without attention (eq. 18): a linear map from h_dec to the whole canvas."""

    def __init__(self, dec_dim: int, x_dim: int):
        super().__init__()
        self.x_dim = x_dim
        self.transform = nn.Linear(dec_dim, x_dim)

    def forward(self, h_dec: Tensor) -> Tensor:
        return self.transform(h_dec)                                          # (B, x_dim)


class AttentionWriter(nn.Module):
    """write with attention (eqs. 28-29): (1 / gamma_hat) F_Y_hat^T w F_X_hat.

    Its first window covers the image evenly (`reset_window`), where the classic zero bias wrote
    25 isolated dots: with sigma = delta / 2 and gamma = 1 / delta^2 a unit w changes the whole
    canvas's logits by 1 on average, as the plain writer's does.
    """
    window_bias = (1 / 2, -2.0)       # sigma / delta and gamma's power of delta

    def __init__(self, dec_dim: int, channels: int, height: int, width: int, N: int):
        super().__init__()
        self.channels, self.N = channels, N
        self.x_dim = channels * height * width
        self.zoomer = ZoomableAttentionWindow(channels, height, width, N)
        self.w_trafo = nn.Linear(dec_dim, channels * N * N)                   # eq. 28
        self.z_trafo = nn.Linear(dec_dim, 5)                                  # eq. 21, own head

    def window(self, h_dec: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The write window (eqs. 21-24): centre (B, 2) = (center_y, center_x), delta, sigma,
        gamma (B,) each; `forward` writes through it."""
        return self.zoomer.window(self.z_trafo(h_dec))

    def forward(self, h_dec: Tensor) -> Tensor:
        w = self.w_trafo(h_dec)                                               # (B, C*N*N)
        centre, delta, sigma, gamma = self.window(h_dec)
        # 1/gamma applied to the N x N patch w rather than to the written H x W image (the write
        # is linear in w): forward and backward divide B*C*N*N numbers instead of B*C*H*W
        return self.zoomer.write_through(self.zoomer.filterbank(centre, delta, sigma),
                                         w / gamma[:, None])

    @torch.no_grad()
    def reset_window(self) -> None:
        """Set the window's bias to the even cover of the image, after the generic init."""
        self.z_trafo.bias.copy_(spanning_window_bias(self.zoomer, *self.window_bias))


class Qsampler(nn.Module):
    """The approximate posterior Q(Z_t | h_t^enc) = N(mu_t, sigma_t) (eqs. 1-2)."""

    def __init__(self, input_dim: int, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.mean_transform = nn.Linear(input_dim, z_dim)
        self.log_sigma_transform = nn.Linear(input_dim, z_dim)

    def forward(self, h_enc: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean_transform(h_enc), self.log_sigma_transform(h_enc)   # (B, Z) each

    def sample(self, h_enc: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z = mu + sigma u, the reparameterised sample of eq. 6, with mu and log sigma.

        Returns z, mean and log_sigma, each (B, Z).
        """
        mean, log_sigma = self(h_enc)
        return mean + torch.exp(log_sigma) * u, mean, log_sigma

    @staticmethod
    def kl(mean: Tensor, log_sigma: Tensor) -> Tensor:
        """KL(N(mu, sigma) || N(0, I)) (eq. 11), summed over the last axis: (..., Z) -> (...)."""
        # 1/2 sum(mu^2 + sigma^2 - log sigma^2) - Z/2. The constant is folded into
        # sigma^2 - 1 = expm1(2 log sigma), which keeps float32 precision near sigma = 1, where
        # training starts (sigma^2 - 1 there would cancel to a few correct digits).
        return 0.5 * (mean ** 2 + torch.expm1(2 * log_sigma) - 2 * log_sigma).sum(dim=-1)

    @staticmethod
    def log_ratio(z: Tensor, u: Tensor, log_sigma: Tensor) -> Tensor:
        """log Q(z) - log P(z) at z = mu + sigma u, summed over the last axis: (..., Z) -> (...)."""
        # log N(z; mu, sigma) - log N(z; 0, 1) with (z - mu) / sigma = u; the 2 pi terms cancel
        return (0.5 * (z ** 2 - u ** 2) - log_sigma).sum(dim=-1)


class LearnedPrior(nn.Module):
    """A learned prior P(Z_t | h_{t-1}^dec) = N(m_t, s_t), not the paper's N(0, I): the map
    z_t = m_t + s_t z'_t of a standard normal z'_t, m_t and log s_t linear in h_{t-1}^dec.

    The rest of DRAW stays in z': Qsampler's N(mu_t, sigma_t) is z'_t's posterior, so z_t's is
    N(m_t + s_t mu_t, s_t^2 sigma_t^2), the posterior written relative to the prior (the
    "residual normal" of Vahdat & Kautz, NVAE, 2020). The KL of eq. 11 and log Q - log P are
    the same for z and z' (one invertible map of both distributions), and a sample's z'_t is
    N(0, I) noise, so only the decoder's input changes: `forward` maps z' to z. Conditioning
    the prior on h_{t-1}^dec is convolutional DRAW's (Gregor et al., "Towards Conceptual
    Compression", 2016).

    What it adds to the paper's model is s_t. The decoder LSTM takes z_t through W_ih and
    already sees h_{t-1}^dec through W_hh, so W_ih m_t folds into W_hh and b_hh: a mean linear
    in h_{t-1}^dec changes how training moves, not what the model can compute. A scale s_t
    that depends on the decoder's state, multiplying z'_t, it cannot compute. (A constant
    scale, too, folds into W_ih.)
    """

    def __init__(self, dec_dim: int, z_dim: int):
        super().__init__()
        # uninitialised, then zero: m_t = 0 and s_t = 1 for every h_{t-1}^dec, the paper's
        # N(0, I), so a model computes what it did without the prior until training moves it;
        # and building one draws nothing from the seed's stream
        self.mean_transform = nn.utils.skip_init(nn.Linear, dec_dim, z_dim)
        self.log_sigma_transform = nn.utils.skip_init(nn.Linear, dec_dim, z_dim)
        for p in self.parameters():
            nn.init.zeros_(p)

    def forward(self, h_dec: Tensor, z: Tensor) -> Tensor:
        """z_t = m_t + s_t z'_t from h_{t-1}^dec (B, dec_dim) and z'_t (B, Z): (B, Z)."""
        return self.mean_transform(h_dec) + torch.exp(self.log_sigma_transform(h_dec)) * z
