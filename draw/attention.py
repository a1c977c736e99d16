"""Selective attention: the grid of Gaussian filters of DRAW (section 3.2).

References
----------
K. Gregor, I. Danihelka, A. Graves, D. J. Rezende, D. Wierstra.
"DRAW: A Recurrent Neural Network For Image Generation", ICML 2015, arXiv:1502.04623.

Conventions
-----------
Pixel coordinates are 0-based: the centre of the first pixel is 0 and the centre of the last
one is W - 1 (or H - 1). Every vertical quantity comes before the horizontal one, as in the
classic repository: (height, width), (center_y, center_x), (F_Y, F_X).
"""
import math

import torch
from torch import Tensor


class ZoomableAttentionWindow:
    """An N x N grid of Gaussian filters over a (channels, img_height, img_width) image.

    Parameter-free: the window's position, stride and width come from the caller (see `nn2att`),
    so one instance serves every batch, dtype and device.

    Parameters
    ----------
    channels : int
        Number of image channels C; every channel is read and written through the same window.
    img_height, img_width : int
        Image size H x W.
    N : int
        Grid size: the window has N x N filters.
    """

    def __init__(self, channels: int, img_height: int, img_width: int, N: int):
        for name, value in (("channels", channels), ("img_height", img_height),
                            ("img_width", img_width), ("N", N)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.channels = channels
        self.img_height = img_height
        self.img_width = img_width
        self.N = N
        self._cache: dict = {}

    def _constants(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """The grid offsets i - N/2 - 1/2 of eqs. 19-20 (N,) and the pixel centres 0..P-1 (P,),
        made once per dtype and device rather than in every call."""
        key = (dtype, device)
        if key not in self._cache:
            kw = dict(dtype=dtype, device=device)
            # eqs. 19-20 with the paper's grid index i = 1..N, so the grid is centred on g
            offset = torch.arange(1, self.N + 1, **kw) - self.N / 2 - 0.5
            self._cache[key] = offset, torch.arange(max(self.img_height, self.img_width), **kw)
        return self._cache[key]

    def filterbank_matrices(self, center_y: Tensor, center_x: Tensor, delta: Tensor,
                            sigma: Tensor) -> tuple[Tensor, Tensor]:
        """The filterbank matrices F_Y and F_X (eqs. 19-20, 25-26).

        Parameters
        ----------
        center_y, center_x : Tensor, shape (B,)
            Grid centre (g_Y, g_X) in 0-based pixel coordinates.
        delta : Tensor, shape (B,)
            Stride delta between neighbouring filters, in pixels.
        sigma : Tensor, shape (B,)
            Standard deviation sigma of every filter, in pixels.

        Returns
        -------
        FY : Tensor, shape (B, N, H)
        FX : Tensor, shape (B, N, W)
            Each row is normalised to sum to 1 (the Z_X and Z_Y of eqs. 25-26).
        """
        return self.filterbank(torch.stack([center_y, center_x], dim=1), delta, sigma)

    def filterbank(self, centre: Tensor, delta: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """`filterbank_matrices` with the grid centre as one tensor (B, 2): (g_Y, g_X), as
        `window` returns it."""
        # Built in float32 at least: in half precision the exponents below overflow to -inf for
        # narrow windows far from a pixel, and a row of -inf has no softmax.
        dtype = torch.promote_types(delta.dtype, torch.float32)
        H, W = self.img_height, self.img_width
        # F_Y and F_X in one pass: the vertical and the horizontal axis stacked as axis 1, over
        # P = max(H, W) pixels (a square image's two axes are the same pixels)
        offset, pixels = self._constants(dtype, delta.device)                       # (N,), (P,)
        mu = centre.to(dtype)[:, :, None] + offset * delta.to(dtype)[:, None, None]  # (B, 2, N)
        s = sigma.to(dtype)[:, None, None, None]                                     # (B, 1, 1, 1)
        logits = -0.5 * ((pixels - mu[..., None]) / s) ** 2                          # (B, 2, N, P)
        if H != W:      # the shorter axis's pixels past its end are not pixels: weight 0
            beyond = torch.stack([pixels >= H, pixels >= W])[:, None]                # (2, 1, P)
            logits = logits.masked_fill(beyond, float("-inf"))
        # Weights below tiny^(1/3) of their row's largest (2.3e-13 in float32; tiny is the
        # smallest normal float) are set to exactly 0: far below the rounding of the largest,
        # so no row sum changes, but otherwise the Gaussian's far tails, and their products
        # with images and gradients, would be denormal floats, on which x86 CPUs compute many
        # times slower. Each row keeps its largest weight, so it stays normalised.
        cut = math.log(torch.finfo(dtype).tiny) / 3                                  # (-29.1 in float32)
        logits = logits.masked_fill(logits < logits.amax(dim=-1, keepdim=True) + cut,
                                    float("-inf"))
        # eqs. 25-26: exp(-(a - mu)^2 / 2 sigma^2) / Z is a softmax over the pixels a. Written as
        # one, it needs no epsilon: it stays finite and normalised for any sigma and for windows
        # that lie far outside the image.
        FY, FX = torch.softmax(logits, dim=-1).to(delta.dtype).unbind(1)            # (B, N, P)
        if H != W:
            FY, FX = FY[..., :H], FX[..., :W]
        return FY, FX

    def read(self, images: Tensor, center_y: Tensor, center_x: Tensor, delta: Tensor,
             sigma: Tensor) -> Tensor:
        """Extract an N x N glimpse from every channel: F_Y x F_X^T (eq. 27 without gamma).

        Parameters
        ----------
        images : Tensor, shape (B, C*H*W)
        center_y, center_x, delta, sigma : Tensor, shape (B,)
            See `filterbank_matrices`.

        Returns
        -------
        Tensor, shape (B, C*N*N)
        """
        return self.read_through(self.filterbank_matrices(center_y, center_x, delta, sigma),
                                 images)

    def read_through(self, filterbank: tuple[Tensor, Tensor], images: Tensor) -> Tensor:
        """`read` with the filterbank (F_Y, F_X) of `filterbank_matrices` given: one filterbank
        can read several images (DRAW's reader: x and x_hat). images (B, C*H*W) -> (B, C*N*N)."""
        FY, FX = filterbank
        B, C, H, W, N = images.shape[0], self.channels, self.img_height, self.img_width, self.N
        # Two bmm over the batch, no broadcasting (fewer calls and autograd nodes): the channels
        # side by side as columns for the left product F_Y x, stacked as rows for the right one.
        x = images.view(B, C, H, W).transpose(1, 2).reshape(B, H, C * W)
        t = torch.bmm(FY, x)                                                   # (B, N, C*W)
        t = t.view(B, N, C, W).transpose(1, 2).reshape(B, C * N, W)
        return torch.bmm(t, FX.transpose(1, 2)).reshape(B, C * N * N)         # (B, C*N*N)

    def write(self, windows: Tensor, center_y: Tensor, center_x: Tensor, delta: Tensor,
              sigma: Tensor) -> Tensor:
        """Paint an N x N patch into every channel: F_Y^T w F_X (eq. 29 without 1/gamma).

        Parameters
        ----------
        windows : Tensor, shape (B, C*N*N)
        center_y, center_x, delta, sigma : Tensor, shape (B,)
            See `filterbank_matrices`.

        Returns
        -------
        Tensor, shape (B, C*H*W)
        """
        return self.write_through(self.filterbank_matrices(center_y, center_x, delta, sigma),
                                  windows)

    def write_through(self, filterbank: tuple[Tensor, Tensor], windows: Tensor) -> Tensor:
        """`write` with the filterbank (F_Y, F_X) of `filterbank_matrices` given:
        windows (B, C*N*N) -> (B, C*H*W)."""
        FY, FX = filterbank
        B, C, H, W, N = windows.shape[0], self.channels, self.img_height, self.img_width, self.N
        # as in `read_through`: channels as rows of the right product w F_X, as columns of the
        # left one; F_Y^T (w F_X) rather than (F_Y^T w) F_X, which MKL ran slower
        t = torch.bmm(windows.view(B, C * N, N), FX)                           # (B, C*N, W)
        t = t.view(B, C, N, W).transpose(1, 2).reshape(B, N, C * W)
        image = torch.bmm(FY.transpose(1, 2), t)                               # (B, H, C*W)
        return image.view(B, H, C, W).transpose(1, 2).reshape(B, C * H * W)

    def nn2att(self, l: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Turn a linear layer's output into attention parameters (eqs. 21-24).

        Parameters
        ----------
        l : Tensor, shape (B, 5)
            Columns (g~_Y, g~_X, log delta~, log sigma^2, log gamma), the order of the classic
            repository (vertical first).

        Returns
        -------
        center_y, center_x, delta, sigma, gamma : Tensor, each of shape (B,)
            g~ = 0 is the image centre and g~ = -1 / +1 lie at its edges; sigma is the standard
            deviation (the square root of exp(log sigma^2)).
        """
        centre, delta, sigma, gamma = self.window(l)
        return (*centre.unbind(dim=1), delta, sigma, gamma)

    def window(self, l: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`nn2att` with the grid centre as one tensor, fewer ops per glimpse: centre (B, 2) =
        (g_Y, g_X), delta, sigma, gamma (B,) each; `filterbank` takes it so."""
        H, W = self.img_height, self.img_width
        # eqs. 22-23, g = (A + 1)/2 (g~ + 1) in the paper's 1-based pixels; minus 1 for 0-based
        half = (H + 1) / 2 if H == W else l.new_tensor([(H + 1) / 2, (W + 1) / 2])
        centre = half * (l[:, :2] + 1) - 1                                          # (B, 2)
        _, _, log_delta, log_sigma2, log_gamma = l.unbind(dim=1)
        # eq. 24; with N = 1 the single filter sits on g and the stride plays no role
        delta = (max(H, W) - 1) / max(self.N - 1, 1) * torch.exp(log_delta)
        sigma = torch.exp(log_sigma2 / 2)
        gamma = torch.exp(log_gamma)
        return centre, delta, sigma, gamma
