"""ZoomableAttentionWindow against an independent float64 reference written from the paper."""
import math

import numpy as np
import pytest
import torch

from draw.attention import ZoomableAttentionWindow


def reference_filterbank(N, size, g, delta, sigma):
    """eqs. 19-20 and 25-26, one example, loops only: F[i-1, a] for i = 1..N, a = 0..size-1."""
    F = np.zeros((N, size))
    for i in range(1, N + 1):
        mu = g + (i - N / 2 - 0.5) * delta
        for a in range(size):
            F[i - 1, a] = math.exp(-(a - mu) ** 2 / (2 * sigma ** 2))
        F[i - 1] /= F[i - 1].sum()
    return F


def reference_read(img, N, gy, gx, delta, sigma):
    """img (C, H, W) -> (C, N, N): F_Y x F_X^T per channel (eq. 27)."""
    FY = reference_filterbank(N, img.shape[1], gy, delta, sigma)
    FX = reference_filterbank(N, img.shape[2], gx, delta, sigma)
    return np.stack([FY @ channel @ FX.T for channel in img])


def reference_write(w, H, W, gy, gx, delta, sigma):
    """w (C, N, N) -> (C, H, W): F_Y^T w F_X per channel (eq. 29)."""
    N = w.shape[1]
    FY = reference_filterbank(N, H, gy, delta, sigma)
    FX = reference_filterbank(N, W, gx, delta, sigma)
    return np.stack([FY.T @ channel @ FX for channel in w])


# (channels, height, width, N): square and non-square images, 1 and 3 channels, small and big N
SHAPES = [(1, 28, 28, 2), (1, 28, 28, 5), (3, 32, 32, 12), (2, 20, 36, 3), (1, 9, 7, 7)]


def random_params(B, H, W, generator):
    """Window parameters in and partly outside the image, fine and coarse strides and widths."""
    rand = lambda lo, hi: lo + (hi - lo) * torch.rand(B, generator=generator, dtype=torch.float64)
    return (rand(-3, H + 2), rand(-3, W + 2), rand(0.3, 4.0), rand(0.4, 3.0))


@pytest.mark.parametrize("C,H,W,N", SHAPES)
def test_filterbank_matches_reference(C, H, W, N):
    g = torch.Generator().manual_seed(0)
    cy, cx, delta, sigma = random_params(4, H, W, g)
    FY, FX = ZoomableAttentionWindow(C, H, W, N).filterbank_matrices(cy, cx, delta, sigma)
    assert FY.shape == (4, N, H) and FX.shape == (4, N, W)
    for b in range(4):
        np.testing.assert_allclose(
            FY[b].numpy(), reference_filterbank(N, H, cy[b].item(), delta[b].item(), sigma[b].item()),
            rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(
            FX[b].numpy(), reference_filterbank(N, W, cx[b].item(), delta[b].item(), sigma[b].item()),
            rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(FY.sum(-1), torch.ones(4, N, dtype=torch.float64))
    torch.testing.assert_close(FX.sum(-1), torch.ones(4, N, dtype=torch.float64))


@pytest.mark.parametrize("C,H,W,N", SHAPES)
def test_read_and_write_match_reference(C, H, W, N):
    g = torch.Generator().manual_seed(1)
    B = 3
    cy, cx, delta, sigma = random_params(B, H, W, g)
    images = torch.rand(B, C * H * W, generator=g, dtype=torch.float64)
    windows = torch.randn(B, C * N * N, generator=g, dtype=torch.float64)
    att = ZoomableAttentionWindow(C, H, W, N)
    r = att.read(images, cy, cx, delta, sigma)
    w = att.write(windows, cy, cx, delta, sigma)
    assert r.shape == (B, C * N * N) and w.shape == (B, C * H * W)
    for b in range(B):
        p = (cy[b].item(), cx[b].item(), delta[b].item(), sigma[b].item())
        expected_r = reference_read(images[b].view(C, H, W).numpy(), N, *p)
        expected_w = reference_write(windows[b].view(C, N, N).numpy(), H, W, *p)
        np.testing.assert_allclose(r[b].view(C, N, N).numpy(), expected_r, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(w[b].view(C, H, W).numpy(), expected_w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("C,H,W,N", SHAPES)
def test_read_and_write_are_adjoint(C, H, W, N):
    """<read(x), w> = <x, write(w)>: write is the transpose of read for the same window."""
    g = torch.Generator().manual_seed(2)
    B = 5
    params = random_params(B, H, W, g)
    x = torch.randn(B, C * H * W, generator=g, dtype=torch.float64)
    w = torch.randn(B, C * N * N, generator=g, dtype=torch.float64)
    att = ZoomableAttentionWindow(C, H, W, N)
    lhs = (att.read(x, *params) * w).sum(1)
    rhs = (x * att.write(w, *params)).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("C,H", [(1, 6), (3, 8), (1, 28)])
def test_full_window_with_unit_stride_reads_back_the_image(C, H):
    """N = H = W, delta = 1, centred, tiny sigma: every filter picks exactly one pixel."""
    B = 2
    att = ZoomableAttentionWindow(C, H, H, H)
    x = torch.rand(B, C * H * H, dtype=torch.float64)
    centre = torch.full((B,), (H - 1) / 2, dtype=torch.float64)
    ones = torch.ones(B, dtype=torch.float64)
    params = (centre, centre, ones, 0.1 * ones)
    torch.testing.assert_close(att.read(x, *params), x, rtol=0, atol=1e-15)
    torch.testing.assert_close(att.write(x, *params), x, rtol=0, atol=1e-15)


def test_batched_equals_per_example():
    C, H, W, N = 3, 12, 10, 4
    g = torch.Generator().manual_seed(3)
    params = random_params(6, H, W, g)
    x = torch.rand(6, C * H * W, generator=g, dtype=torch.float64)
    w = torch.rand(6, C * N * N, generator=g, dtype=torch.float64)
    att = ZoomableAttentionWindow(C, H, W, N)
    batched_r, batched_w = att.read(x, *params), att.write(w, *params)
    for b in range(6):
        one = tuple(p[b:b + 1] for p in params)
        torch.testing.assert_close(att.read(x[b:b + 1], *one), batched_r[b:b + 1], rtol=0, atol=1e-15)
        torch.testing.assert_close(att.write(w[b:b + 1], *one), batched_w[b:b + 1], rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_any_float_dtype_stays_finite_and_normalised(dtype):
    """Windows far outside the image and extreme widths must not give NaN or empty filters."""
    H = W = 28
    att = ZoomableAttentionWindow(1, H, W, 5)
    cy = torch.tensor([13.5, -500.0, 800.0, 13.5], dtype=dtype)
    cx = torch.tensor([13.5, 13.5, -900.0, 13.5], dtype=dtype)
    delta = torch.tensor([1.0, 3.0, 0.5, 50.0], dtype=dtype)
    sigma = torch.tensor([1.0, 0.01, 0.05, 100.0], dtype=dtype)
    FY, FX = att.filterbank_matrices(cy, cx, delta, sigma)
    assert FY.dtype == dtype and torch.isfinite(FY).all() and torch.isfinite(FX).all()
    tol = 1e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-5
    torch.testing.assert_close(FY.sum(-1).float(), torch.ones(4, 5), rtol=0, atol=tol)
    x = torch.rand(4, H * W).to(dtype)
    assert torch.isfinite(att.read(x, cy, cx, delta, sigma)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_far_tails_are_exact_zeros_not_denormals(dtype):
    """A narrow window's Gaussian tails fall through the denormal range (in float32 at 9-10
    pixels here): weights below tiny^(1/3) of their row's largest are exactly 0, the rest
    match the reference, and no weight, glimpse or gradient is a denormal float."""
    H = W = 28
    att = ZoomableAttentionWindow(1, H, W, 3)
    gy, gx, d, s = 4.0, 21.0, 2.0, 0.7
    params = [torch.tensor([v], dtype=dtype, requires_grad=True) for v in (gy, gx, d, s)]
    FY, FX = att.filterbank_matrices(*params)
    tiny = torch.finfo(dtype).tiny
    for F, g in ((FY[0], gy), (FX[0], gx)):
        ref = reference_filterbank(3, H, g, d, s)
        kept = ref >= tiny ** (1 / 3) * ref.max(axis=1, keepdims=True)
        assert (~kept).any() and kept.any()            # the cut falls inside these rows
        assert (F.detach().numpy()[~kept] == 0).all()
        np.testing.assert_allclose(F.detach().numpy()[kept], ref[kept],
                                   rtol=1e-5 if dtype == torch.float32 else 1e-12)
    x = torch.rand(1, H * W, dtype=dtype, generator=torch.Generator().manual_seed(0))
    glimpse = att.read(x, *params)
    glimpse.sum().backward()
    for t in (FY, FX, glimpse, *(p.grad for p in params)):
        t = t.detach()
        assert not ((t != 0) & (t.abs() < tiny)).any()


@pytest.mark.parametrize("H,W", [(20, 30), (25, 25)])      # (A + 1)/2 as a tensor and as a float
def test_nn2att_follows_eqs_21_to_24(H, W):
    N = 5
    att = ZoomableAttentionWindow(1, H, W, N)
    l = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0],          # centre, unit scales
                      [-1.0, 1.0, math.log(2.0), math.log(9.0), math.log(0.5)],
                      [0.5, -0.25, -1.0, 2.0, 3.0]], dtype=torch.float64)
    cy, cx, delta, sigma, gamma = att.nn2att(l)
    # eq. 22-23 in 1-based pixels is g = (A + 1)/2 (g~ + 1); 0-based is one less
    torch.testing.assert_close(cy, torch.tensor([(H - 1) / 2, -1.0, (H + 1) / 2 * 1.5 - 1],
                                                dtype=torch.float64))
    torch.testing.assert_close(cx, torch.tensor([(W - 1) / 2, float(W), (W + 1) / 2 * 0.75 - 1],
                                                dtype=torch.float64))
    scale = (max(H, W) - 1) / (N - 1)                                         # eq. 24
    torch.testing.assert_close(delta, scale * torch.tensor([1.0, 2.0, math.exp(-1.0)],
                                                           dtype=torch.float64))
    torch.testing.assert_close(sigma, torch.tensor([1.0, 3.0, math.exp(1.0)], dtype=torch.float64))
    torch.testing.assert_close(gamma, torch.tensor([1.0, 0.5, math.exp(3.0)], dtype=torch.float64))


@pytest.mark.parametrize("C,H,W,N", SHAPES)
def test_images_read_through_one_filterbank_are_the_channels_of_one_image(C, H, W, N):
    """DRAW's reader reads x and x_hat one at a time through one filterbank (read_through): the
    same as reading them side by side as one image of 2C channels, so channels do not mix."""
    g = torch.Generator().manual_seed(4)
    params = random_params(3, H, W, g)
    x, x_hat = torch.rand(2, 3, C * H * W, generator=g, dtype=torch.float64)
    att = ZoomableAttentionWindow(C, H, W, N)
    filterbank = att.filterbank(torch.stack(params[:2], dim=1), *params[2:])
    pair = ZoomableAttentionWindow(2 * C, H, W, N).read(torch.cat([x, x_hat], dim=1), *params)
    one_at_a_time = torch.cat([att.read_through(filterbank, x),
                               att.read_through(filterbank, x_hat)], dim=1)
    torch.testing.assert_close(one_at_a_time, pair, rtol=0, atol=1e-15)


def test_unit_stride_window_at_g_zero_spans_the_image():
    """With g~ = 0 and delta~ = 1 the N grid points run from the first to the last pixel."""
    H = W = 28
    N = 5
    att = ZoomableAttentionWindow(1, H, W, N)
    cy, cx, delta, _, _ = att.nn2att(torch.zeros(1, 5, dtype=torch.float64))
    first = cx + (1 - N / 2 - 0.5) * delta
    last = cx + (N - N / 2 - 0.5) * delta
    torch.testing.assert_close(first, torch.zeros(1, dtype=torch.float64))
    torch.testing.assert_close(last, torch.full((1,), W - 1.0, dtype=torch.float64))


@pytest.mark.parametrize("bad", [dict(channels=0), dict(img_height=-1), dict(N=0), dict(N=2.5)])
def test_bad_sizes_raise(bad):
    args = dict(channels=1, img_height=28, img_width=28, N=2) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        ZoomableAttentionWindow(**args)
