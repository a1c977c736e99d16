"""A fast path for DRAW: the model of `draw.model.DrawModel`, computed in fewer, larger operations.

References
----------
K. Gregor, I. Danihelka, A. Graves, D. J. Rezende, D. Wierstra.
"DRAW: A Recurrent Neural Network For Image Generation", ICML 2015, arXiv:1502.04623.
Equation numbers below are the paper's.

What it changes
---------------
At DRAW's usual sizes a plain PyTorch step runs a few hundred small operations forward and as
many autograd nodes backward, and much of its time goes to them rather than to the matmuls. This
module computes the same numbers from the model's own parameters (so checkpoints and optimizers
are unaffected) in fewer, larger operations; bench/README.md has what that gains:

- Every matrix that multiplies h_dec is stacked into one: the decoder's recurrence (eq. 7), the
  encoder's h_dec input (eq. 5), the read head (eq. 21) and the write heads (eqs. 21, 28). One
  matmul after step t's decoder serves the write of step t and the read, encoder and decoder of
  step t + 1. Likewise h_enc feeds the encoder's recurrence and the sampler (eq. 1) in one matmul.
- LSTM gates are reordered to (i, f, o, g): one sigmoid and one tanh cover them.
- The write window of step t and the read window of step t + 1 come from the same h_dec, so
  their four filterbanks are built in one softmax.
- Pixels are kept in (H, C, W) order inside the loop, and the weights that touch pixels are
  permuted to match, so the attention matmuls need no transposed copies.
- Without read attention the read is linear in x_hat = x - sigma(c): the x part of the encoder's
  input is computed once instead of T times.
- Backpropagation through time is written out (`_backward_step`) instead of recorded by
  autograd: each step's backward needs only the input-gradient matmuls, and every weight gradient
  is one large matmul over all T * B rows after the loop.
"""
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from draw.model import AttentionReader, AttentionWriter, DrawModel, standard_noise


@dataclass(frozen=True)
class _Layout:
    """Sizes of one model, and where each block sits in the stacked h_dec product P."""
    C: int
    H: int
    W: int
    T: int
    E: int
    D: int
    Z: int
    read_N: int | None
    write_N: int | None

    @property
    def X(self) -> int:
        return self.C * self.H * self.W

    @property
    def windows(self) -> tuple[int, ...]:
        """Grid sizes of the attention windows built from one h_dec: (read, write) order."""
        return tuple(N for N in (self.read_N, self.write_N) if N is not None)

    # P = h_dec W_h^T + b_h has the blocks [dec gates | enc gates | heads]; the heads are
    # [read head (5) | write head (5) | write patch (C N N)] with attention, the canvas update
    # (X) without. The last step needs the heads only.
    @property
    def enc_start(self) -> int:
        return 4 * self.D

    @property
    def heads_start(self) -> int:
        return 4 * self.D + 4 * self.E

    @property
    def patch_start(self) -> int:
        return self.heads_start + 5 * len(self.windows)


class _Weights(NamedTuple):
    """The model's parameters, stacked and permuted for the loop (see `FastDraw._weights`)."""
    h: Tensor          # (n_h, D)    everything h_dec multiplies
    h_bias: Tensor     # (n_h,)
    e: Tensor          # (4E+2Z, E)  encoder recurrence, sampler mean, sampler log sigma
    e_bias: Tensor     # (4E+2Z,)
    z: Tensor          # (4D, Z)     decoder input
    r: Tensor          # (4E, R)     encoder input from the glimpse; (4E, X) x_hat part without
    r_x: Tensor        # (4E, X)     x part of the encoder input without read attention, else
                       #             (0, 0)


class _Filterbanks:
    """Filterbanks (eqs. 19-26) of the windows of one h_dec, all in one softmax, with backward.

    Parameters
    ----------
    Ns : tuple of int
        Grid size of each window, in the order their 5 raw parameters appear.
    height, width : int
    like : Tensor
        Gives dtype and device.
    """

    def __init__(self, Ns: tuple[int, ...], height: int, width: int, like: Tensor):
        kw = dict(dtype=like.dtype, device=like.device)
        self.Ns, self.H, self.W = Ns, height, width
        # eq. 24's factor, and eqs. 19-20's grid offsets (i - N/2 - 0.5) of every filter
        self.scale = torch.tensor([(max(height, width) - 1) / max(N - 1, 1) for N in Ns], **kw)
        self.offset = torch.cat([torch.arange(1, N + 1, **kw) - N / 2 - 0.5 for N in Ns])  # (M,)
        self.owner = torch.cat([torch.full((N,), k, dtype=torch.long, device=like.device)
                                for k, N in enumerate(Ns)])                              # (M,)
        self.one_hot = torch.nn.functional.one_hot(self.owner, len(Ns)).to(**kw)         # (M, K)
        self.half = torch.tensor([(height + 1) / 2, (width + 1) / 2], **kw)              # (2,)
        # one pixel axis of length P serves F_Y and F_X; when H != W the pixels past an axis's
        # end get -inf logits (softmax weight 0) and are sliced off
        P = max(height, width)
        self.pixels = torch.arange(P, **kw)
        self.mask = None
        if height != width:
            self.mask = torch.zeros(2, 1, P, **kw)
            self.mask[0, :, height:] = float("-inf")
            self.mask[1, :, width:] = float("-inf")

    def forward(self, a: Tensor) -> tuple[Tensor, ...]:
        """Build the filterbanks of K windows from their raw parameters.

        Parameters
        ----------
        a : Tensor, shape (B, K, 5)
            (g~_Y, g~_X, log delta~, log sigma^2, log gamma) of each window (eq. 21).

        Returns
        -------
        tuple of Tensor
            What `windows` and `backward` read: the softmax (B, 2, M, P) over P pixels of all M
            filters (F_Y rows, then F_X rows), pixel minus filter centre, 2 sigma^2 (B, K) and
            exp of a's last three columns (B, K, 3).
        """
        center = a[:, :, :2] * self.half + (self.half - 1)                # (B, K, 2) eqs. 22-23
        e = torch.exp(a[:, :, 2:])                                        # (B, K, 3)
        delta = e[:, :, 0] * self.scale                                   # (B, K)    eq. 24
        two_var = 2 * e[:, :, 1]                                          # (B, K)    2 sigma^2
        mu = torch.addcmul(center[:, self.owner].transpose(1, 2),
                           self.offset, delta[:, self.owner][:, None])    # (B, 2, M) eqs. 19-20
        diff = self.pixels - mu[..., None]                                # (B, 2, M, P)
        logits = diff ** 2 / -two_var[:, None, self.owner, None]
        if self.mask is not None:
            logits = logits + self.mask
        # eqs. 25-26 as a softmax over the pixels (as ZoomableAttentionWindow): no epsilon needed
        fb = torch.softmax(logits, dim=-1)                                # (B, 2, M, P)
        return fb, diff, two_var, e

    def windows(self, saved: tuple[Tensor, ...]) -> list[tuple[Tensor, Tensor, Tensor]]:
        """(F_Y (B, N, H), F_X (B, N, W), gamma (B,)) of each window, from `forward`'s output."""
        fb, _, _, e = saved
        out, start = [], 0
        for k, N in enumerate(self.Ns):
            out.append((fb[:, 0, start:start + N, :self.H], fb[:, 1, start:start + N, :self.W],
                        e[:, k, 2]))
            start += N
        return out

    def backward(self, grads, saved) -> Tensor:
        """Gradients of (F_Y, F_X, gamma) per window -> gradient of `a`, shape (B, K, 5)."""
        fb, diff, two_var, e = saved
        P = fb.shape[-1]
        pad = torch.nn.functional.pad
        dfb = torch.cat([torch.stack([pad(dFY, (0, P - self.H)), pad(dFX, (0, P - self.W))], 1)
                         for dFY, dFX, _ in grads], dim=2)                # (B, 2, M, P)
        dlogits = torch.ops.aten._softmax_backward_data(dfb, fb, -1, fb.dtype)
        t = dlogits * diff                                                # (B, 2, M, P)
        tv = two_var[:, self.owner]                                       # (B, M)
        # logits = -diff^2 / tv: d/dmu = 2 diff / tv, d/dtv = diff^2 / tv^2
        dmu = t.sum(-1) * (2 / tv[:, None])                               # (B, 2, M)
        dtv = ((t * diff).sum((1, 3)) / tv ** 2) @ self.one_hot           # (B, K)
        dcenter = dmu @ self.one_hot                                      # (B, 2, K)
        ddelta = (dmu.sum(1) * self.offset) @ self.one_hot                # (B, K)
        dgamma = torch.stack([g for _, _, g in grads], dim=1)             # (B, K)
        return torch.stack([dcenter[:, 0] * self.half[0], dcenter[:, 1] * self.half[1],
                            ddelta * self.scale * e[:, :, 0], dtv * 2 * e[:, :, 1],
                            dgamma * e[:, :, 2]], dim=2)                  # (B, K, 5)


def _lstm(gates: Tensor, cell: Tensor):
    """nn.LSTMCell's update from pre-activations in (i, f, o, g) order.

    `gates` (B, 4n) is overwritten with the activations, which `_lstm_backward` needs.
    Returns h (B, n), the new cell (B, n), the activations (B, 4n) and tanh(cell) (B, n).
    """
    n = cell.shape[1]
    # in place: a fresh buffer from addmm, read by nothing else; saves two passes and a copy
    gates[:, :3 * n].sigmoid_()
    gates[:, 3 * n:].tanh_()
    i, f, o, g = gates.split(n, dim=1)
    cell = torch.addcmul(f * cell, i, g)
    tanh_cell = torch.tanh(cell)
    return o * tanh_cell, cell, gates, tanh_cell


def _lstm_backward(dh: Tensor, dcell: Tensor, act: Tensor, cell_prev: Tensor, tanh_cell: Tensor,
                   dgates: Tensor):
    """Backward of `_lstm`: gradients of its pre-activations, written into `dgates` (B, 4n), and
    of the previous cell (returned)."""
    n = dh.shape[1]
    i, f, o, g = act.split(n, dim=1)
    dcell = dcell + torch.ops.aten.tanh_backward(dh * o, tanh_cell)
    # each gate's gradient written straight into its block of one buffer, then scaled in place
    # by the activation's derivative: no concatenation passes
    for k, (a, b) in enumerate(((dcell, g), (dcell, cell_prev), (dh, tanh_cell), (dcell, i))):
        torch.mul(a, b, out=dgates[:, k * n:(k + 1) * n])
    d_ifo, d_g = dgates[:, :3 * n], dgates[:, 3 * n:]
    torch.ops.aten.sigmoid_backward.grad_input(d_ifo, act[:, :3 * n], grad_input=d_ifo)
    torch.ops.aten.tanh_backward.grad_input(d_g, act[:, 3 * n:], grad_input=d_g)
    return dcell * f


def _forward_step(L: _Layout, fbk: _Filterbanks | None, w: _Weights, x4: Tensor, x_part: Tensor,
                  u_t: Tensor, state: tuple, read_window: tuple, last: bool):
    """One step of eqs. 3-8, pixels in (H, C, W) order.

    state is (c_{t-1} (B, X), cell_enc, cell_dec, P_{t-1} (B, n_h), Q_{t-1} (B, 4E)) with
    P = h_dec W_h^T + b_h and Q = h_enc W_ehh^T; read_window is step t's (F_Y, F_X, gamma) or ().
    Returns the next state, the filterbank pass of h_dec_t (`_Filterbanks.forward`'s saved
    tuple, or ()), and what `_backward_step` needs.
    """
    c, cell_enc, cell_dec, P, Q = state
    B, C, H, W = c.shape[0], L.C, L.H, L.W
    s = torch.sigmoid(c)                                                  # (B, X)
    enc_in = P[:, L.enc_start:L.heads_start] + Q                          # (B, 4E)
    if L.read_N is not None:                                              # eqs. 3, 4 (27), 5
        FY, FX, gamma = read_window
        N = L.read_N
        pair = torch.cat([x4, x4 - s.view(B, H, C, W)], dim=2).view(B, H, 2 * C * W)
        rows = FY @ pair                                                  # (B, N, 2C*W)
        glimpse = (rows.view(B, N * 2 * C, W) @ FX.transpose(1, 2)).view(B, -1)  # (B, R)
        r = glimpse * gamma[:, None]                                      # (B, R)
        gates = torch.addmm(enc_in, r, w.r.t())                           # (B, 4E)
        read_saved = (rows, glimpse, r)
    else:                                                                 # eqs. 3, 4 (17), 5
        gates = torch.addmm(enc_in + x_part, s, w.r.t(), alpha=-1)
        read_saved = ()
    h_enc, cell_enc_new, act_e, tanh_e = _lstm(gates, cell_enc)
    he = torch.addmm(w.e_bias, h_enc, w.e.t())                            # (B, 4E + 2Z)
    Q, mean, log_sigma = he.split([4 * L.E, L.Z, L.Z], dim=1)
    sigma = torch.exp(log_sigma)
    z = torch.addcmul(mean, sigma, u_t)                                   # eq. 6
    h_dec, cell_dec_new, act_d, tanh_d = _lstm(torch.addmm(P[:, :L.enc_start], z, w.z.t()),
                                               cell_dec)                  # eq. 7
    first = L.heads_start if last else 0
    P = torch.addmm(w.h_bias[first:], h_dec, w.h[first:].t())             # (B, n_h - first)
    heads = P[:, L.heads_start - first:]
    fb_pass, write_saved = (), ()
    if fbk is not None:
        fb_pass = fbk.forward(heads[:, :5 * fbk.one_hot.shape[1]].view(B, -1, 5))
    if L.write_N is not None:                                             # eqs. 8, 29
        FY, FX, gamma = fbk.windows(fb_pass)[-1]
        N = L.write_N
        patch = heads[:, L.patch_start - L.heads_start:] / gamma[:, None]  # (B, N*C*N)
        cols = (patch.view(B, N * C, N) @ FX).view(B, N, C * W)           # (B, N, C*W)
        c = torch.baddbmm(c.view(B, H, C * W), FY.transpose(1, 2), cols).view(B, -1)
        write_saved = (patch, cols)
    else:                                                                 # eqs. 8, 18
        c = c + heads[:, L.patch_start - L.heads_start:]
    saved = (s, read_saved, act_e, cell_enc, tanh_e, h_enc, mean, sigma, log_sigma, z,
             act_d, cell_dec, tanh_d, h_dec, write_saved)
    return (c, cell_enc_new, cell_dec_new, P, Q), fb_pass, saved


def _backward_step(L: _Layout, fbk: _Filterbanks | None, w: _Weights, x4: Tensor, u_t: Tensor,
                   dkl_t: Tensor, saved: tuple, fb_in: tuple, fb_out: tuple, carry: tuple,
                   grad_rows: tuple, last: bool):
    """Backward of `_forward_step` (step t), given the gradients flowing back from step t + 1.

    fb_in is the filterbank pass that gave step t its read window, fb_out the one of h_dec_t.
    carry is (dc_t (B, X), dgates_dec_{t+1} (B, 4D), dgates_enc_{t+1} (B, 4E), dcell_enc,
    dcell_dec, read_grads_{t+1}: the gradients of (F_Y, F_X, gamma) of step t+1's read or ()).
    grad_rows are step t's slices (B, .) of the buffers that collect, for the weight gradients in
    bulk, dP_t, dgates_dec_t, dhe_t and dgates_enc_t; they are written here.
    Returns the carry for step t - 1.
    """
    dc, dgates_dec, dgates_enc, dcell_enc, dcell_dec, read_grads = carry
    (s, read_saved, act_e, cell_enc, tanh_e, h_enc, mean, sigma, log_sigma, z,
     act_d, cell_dec, tanh_d, h_dec, write_saved) = saved
    B, C, H, W = dc.shape[0], L.C, L.H, L.W
    window_grads = [read_grads] if L.read_N is not None else []
    if L.write_N is not None:                                             # eqs. 8, 29
        FY, FX, gamma = fbk.windows(fb_out)[-1]
        N = L.write_N
        patch, cols = write_saved
        dc3 = dc.view(B, H, C * W)
        dcols = FY @ dc3                                                  # (B, N, C*W)
        dFY = cols @ dc3.transpose(1, 2)                                  # (B, N, H)
        dcols = dcols.view(B, N * C, W)
        dpatch = (dcols @ FX.transpose(1, 2)).view(B, -1)                 # (B, N*C*N)
        dFX = patch.view(B, N * C, N).transpose(1, 2) @ dcols             # (B, N, W)
        dgamma = -(dpatch * patch).sum(1) / gamma
        window_grads.append((dFY, dFX, dgamma))
        dheads = [dpatch / gamma[:, None]]
    else:                                                                 # eqs. 8, 18
        dheads = [dc]
    if fbk is not None:
        dheads.insert(0, fbk.backward(window_grads, fb_out).view(B, -1))
    dP, dgates_dec_t, dhe, dgates_enc_t = grad_rows
    torch.cat([dgates_dec, dgates_enc] + dheads, dim=1, out=dP)           # (B, n_h)
    first = L.heads_start if last else 0
    dh_dec = dP[:, first:] @ w.h[first:]                                  # (B, D)
    dcell_dec = _lstm_backward(dh_dec, dcell_dec, act_d, cell_dec, tanh_d, dgates_dec_t)
    dz = dgates_dec_t @ w.z                                               # (B, Z)
    # eq. 6 and eq. 11: kl = 1/2 sum(mean^2 + sigma^2 - 2 log sigma) - Z/2, so
    # d kl / d log sigma = sigma^2 - 1, written as expm1: no cancellation near sigma = 1
    dkl_t = dkl_t[:, None]
    dmean = torch.addcmul(dz, dkl_t, mean)
    dlog_sigma = torch.addcmul(dkl_t * torch.expm1(2 * log_sigma), dz * u_t, sigma)
    torch.cat([dgates_enc, dmean, dlog_sigma], dim=1, out=dhe)            # (B, 4E + 2Z)
    dcell_enc = _lstm_backward(dhe @ w.e, dcell_enc, act_e, cell_enc, tanh_e, dgates_enc_t)
    dgates_dec, dgates_enc = dgates_dec_t, dgates_enc_t
    if L.read_N is not None:                                              # eq. 27
        FY, FX, gamma = fbk.windows(fb_in)[0]
        N = L.read_N
        rows, glimpse, _ = read_saved
        dr = dgates_enc @ w.r                                             # (B, R)
        dgamma = (dr * glimpse).sum(1)
        dglimpse = (dr * gamma[:, None]).view(B, N * 2 * C, N)
        drows = (dglimpse @ FX).view(B, N, 2 * C * W)                     # (B, N, 2C*W)
        dFX = dglimpse.transpose(1, 2) @ rows.view(B, N * 2 * C, W)       # (B, N, W)
        pair = torch.cat([x4, x4 - s.view(B, H, C, W)], dim=2).view(B, H, 2 * C * W)
        dFY = drows @ pair.transpose(1, 2)                                # (B, N, H)
        dpair = (FY.transpose(1, 2) @ drows).view(B, H, 2 * C, W)
        ds = -dpair[:, :, C:].reshape(B, -1)                              # (B, X)
        read_grads = (dFY, dFX, dgamma)
    else:
        ds = -(dgates_enc @ w.r)                                          # (B, X)
    dc = dc + torch.ops.aten.sigmoid_backward(ds, s)                      # eq. 3
    return dc, dgates_dec, dgates_enc, dcell_enc, dcell_dec, read_grads


class _Unroll(torch.autograd.Function):
    """All T steps of DRAW as one autograd node whose backward is `FastDraw._backward_loop`."""

    @staticmethod
    def forward(ctx, fast: "FastDraw", x: Tensor, u: Tensor, *weights: Tensor):
        c, kl, saved = fast._forward_loop(x, u, _Weights(*weights))
        ctx.fast, ctx.saved = fast, saved
        ctx.save_for_backward(x, u, *weights)
        return c, kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dc: Tensor, dkl: Tensor):
        x, u, *weights = ctx.saved_tensors
        grads = ctx.fast._backward_loop(x, u, _Weights(*weights), ctx.saved, dc, dkl)
        ctx.saved = None
        return (None, None, None, *grads)


def _ifog(n: int, device) -> Tensor:
    """Row order that turns nn.LSTMCell's gate blocks (i, f, g, o) into (i, f, o, g)."""
    i = torch.arange(n, device=device)
    return torch.cat([i, i + n, i + 3 * n, i + 2 * n])


class FastDraw:
    """DRAW's forward pass and sampling computed from a model's parameters in fewer operations.

    Holds no parameters of its own: every call reads the model's current parameters, so training
    through it trains the model, and checkpoints of the model are unchanged. Results equal the
    model's up to float rounding; gradients reach the parameters only (not x or u).

    Parameters
    ----------
    model : DrawModel
        Built by `DrawModel.from_config`.
    compile : bool or str
        Compile one step's forward and backward with `torch.compile`; a string is its `mode`
        (see `accelerate`).
    """

    def __init__(self, model: DrawModel, compile: bool | str = False):
        cfg = model.config
        if cfg is None:
            raise ValueError("the fast path needs a model built by DrawModel.from_config")
        if isinstance(model.reader, AttentionReader) != (cfg.read_N is not None) or \
                isinstance(model.writer, AttentionWriter) != (cfg.write_N is not None):
            raise ValueError("the model's reader/writer do not match its config")
        self.model = model
        self.L = _Layout(cfg.channels, cfg.height, cfg.width, cfg.n_iter, cfg.enc_dim,
                         cfg.dec_dim, cfg.z_dim, cfg.read_N, cfg.write_N)
        self._fwd, self._bwd = _forward_step, _backward_step
        if compile:
            # one graph per step kind (first, middle, last), reused T times: short compiles
            options = {"mode": compile} if isinstance(compile, str) else {}
            self._fwd = torch.compile(_forward_step, dynamic=False, **options)
            self._bwd = torch.compile(_backward_step, dynamic=False, **options)
        self._filterbanks: dict = {}
        self._grad_buffers: tuple = ()

    # ------------------------------------------------------------------ parameters
    def _weights(self) -> _Weights:
        """The model's parameters stacked and permuted for the loop; differentiable, so the
        gradients of the stacked matrices flow back to the model's parameters."""
        m, L = self.model, self.L
        dev = m.encoder.weight_ih.device
        enc_rows, dec_rows = _ifog(L.E, dev), _ifog(L.D, dev)
        R = m.reader.read_dim
        enc_r = m.encoder.weight_ih[:, :R].index_select(0, enc_rows)         # (4E, R)
        h = [m.decoder.weight_hh.index_select(0, dec_rows),
             m.encoder.weight_ih[:, R:].index_select(0, enc_rows)]
        h_bias = [(m.decoder.bias_ih + m.decoder.bias_hh).index_select(0, dec_rows),
                  (m.encoder.bias_ih + m.encoder.bias_hh).index_select(0, enc_rows)]
        if L.read_N is not None:
            h.append(m.reader.readout.weight)
            h_bias.append(m.reader.readout.bias)
            # the glimpse comes out in (N, 2C, N) order, see _forward_step
            N = L.read_N
            order = torch.arange(2 * L.C * N * N, device=dev).view(2 * L.C, N, N).transpose(0, 1)
            r = enc_r.index_select(1, order.reshape(-1))                      # (4E, R)
            r_x = enc_r.new_zeros(0, 0)
        else:
            # r = [x, x_hat] with x_hat = x - sigma(c), so
            # r W^T = x (W_x + W_xhat)^T - sigma(c) W_xhat^T
            hcw = self._hcw(dev)
            r = enc_r[:, L.X:].index_select(1, hcw)                           # (4E, X)
            r_x = (enc_r[:, :L.X] + enc_r[:, L.X:]).index_select(1, hcw)      # (4E, X)
        if L.write_N is not None:
            N = L.write_N
            # the patch in (N, C, N) order, see _forward_step
            order = torch.arange(L.C * N * N, device=dev).view(L.C, N, N).transpose(0, 1)
            order = order.reshape(-1)
            h += [m.writer.z_trafo.weight, m.writer.w_trafo.weight.index_select(0, order)]
            h_bias += [m.writer.z_trafo.bias, m.writer.w_trafo.bias.index_select(0, order)]
        else:
            hcw = self._hcw(dev)
            h.append(m.writer.transform.weight.index_select(0, hcw))
            h_bias.append(m.writer.transform.bias.index_select(0, hcw))
        s = m.sampler
        e_bias = torch.cat([s.mean_transform.bias.new_zeros(4 * L.E), s.mean_transform.bias,
                            s.log_sigma_transform.bias])
        e = torch.cat([m.encoder.weight_hh.index_select(0, enc_rows),
                       s.mean_transform.weight, s.log_sigma_transform.weight])
        return _Weights(torch.cat(h), torch.cat(h_bias), e, e_bias,
                        m.decoder.weight_ih.index_select(0, dec_rows), r, r_x)

    def _filterbank(self, Ns: tuple[int, ...], like: Tensor) -> _Filterbanks | None:
        if not Ns:
            return None
        key = (Ns, like.dtype, like.device)
        if key not in self._filterbanks:
            self._filterbanks[key] = _Filterbanks(Ns, self.L.H, self.L.W, like)
        return self._filterbanks[key]

    def _hcw(self, device) -> Tensor:
        """Pixel order of the loop: its k-th pixel is pixel hcw[k] of the (C, H, W) order."""
        L = self.L
        return torch.arange(L.X, device=device).view(L.C, L.H, L.W).transpose(0, 1).reshape(-1)

    def _gradient_rows(self, B: int, w: _Weights) -> tuple[Tensor, ...]:
        """(T, B, .) buffers for dP, dgates_dec, dhe and dgates_enc, which the backward fills
        step by step and the weight gradients read. Kept from one backward to the next: at
        T = 64 they are 136 MB, and fresh memory costs a page fault per 4 kB. Backward passes
        through one FastDraw must therefore not run concurrently (autograd runs them in turn).
        """
        L = self.L
        shapes = [(L.T, B, n) for n in (w.h.shape[0], 4 * L.D, w.e.shape[0], 4 * L.E)]
        kept = self._grad_buffers
        if not kept or [tuple(b.shape) for b in kept] != shapes or \
                kept[0].dtype != w.h.dtype or kept[0].device != w.h.device:
            self._grad_buffers = tuple(w.h.new_empty(shape) for shape in shapes)
        return self._grad_buffers

    def _to_hcw(self, v: Tensor) -> Tensor:
        if self.L.C == 1:
            return v
        return v.view(-1, self.L.C, self.L.H, self.L.W).transpose(1, 2).reshape(v.shape)

    def _to_chw(self, v: Tensor) -> Tensor:
        if self.L.C == 1:
            return v
        return v.view(-1, self.L.H, self.L.C, self.L.W).transpose(1, 2).reshape(v.shape)

    def _noise(self, u: Tensor | None, batch: int, like: Tensor) -> Tensor:
        # the same draw as DrawModel._noise, so a seeded call matches the plain path
        return standard_noise(u, (self.L.T, batch, self.L.Z), like)

    # ------------------------------------------------------------------ training pass
    def __call__(self, x: Tensor, u: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Same as `DrawModel.forward`.

        Parameters
        ----------
        x : Tensor, shape (B, x_dim), values in [0, 1]
        u : Tensor, shape (n_iter, B, z_dim), optional

        Returns
        -------
        c : Tensor, shape (B, x_dim), the final canvas logits c_T
        kl : Tensor, shape (n_iter, B), the KL term of every step (eq. 11)
        """
        if x.dim() != 2 or x.shape[1] != self.L.X:
            raise ValueError(f"x must have shape (batch, {self.L.X}), got {tuple(x.shape)}")
        u = self._noise(u, x.shape[0], x)
        if x.requires_grad or u.requires_grad:
            raise ValueError("the fast path differentiates the parameters only; "
                             "use the model itself for gradients with respect to x or u")
        return _Unroll.apply(self, x, u, *self._weights())

    def _forward_loop(self, x: Tensor, u: Tensor, w: _Weights):
        L = self.L
        B = x.shape[0]
        fbk = self._filterbank(L.windows, x)
        x_hcw = self._to_hcw(x)
        x4 = x_hcw.view(B, L.H, L.C, L.W)
        x_part = x_hcw @ w.r_x.t() if L.read_N is None else x.new_zeros(0)   # (B, 4E), once
        P = w.h_bias.expand(B, -1)                                           # h_dec_0 = 0
        state = (x.new_zeros(B, L.X), x.new_zeros(B, L.E), x.new_zeros(B, L.D), P,
                 x.new_zeros(B, 4 * L.E))
        passes = [fbk.forward(P[:, L.heads_start:L.patch_start].reshape(B, -1, 5))
                  if fbk is not None else ()]
        steps = []
        for t in range(L.T):
            read_window = fbk.windows(passes[t])[0] if L.read_N is not None else ()
            state, fb_pass, saved = self._fwd(L, fbk, w, x4, x_part, u[t], state, read_window,
                                              t == L.T - 1)
            passes.append(fb_pass)
            steps.append(saved)
        column = list(zip(*steps))
        mean, log_sigma = torch.stack(column[6]), torch.stack(column[8])    # (T, B, Z)
        # eq. 11, with sigma^2 - 1 as expm1(2 log sigma): the same value without the
        # cancellation of the paper's form near sigma = 1, where training starts
        kl = 0.5 * (mean ** 2 + torch.expm1(2 * log_sigma) - 2 * log_sigma).sum(dim=2)
        return self._to_chw(state[0]), kl, (x_hcw, x4, passes, steps)

    def _backward_loop(self, x: Tensor, u: Tensor, w: _Weights, saved: tuple, dc: Tensor,
                       dkl: Tensor) -> tuple[Tensor | None, ...]:
        L = self.L
        x_hcw, x4, passes, steps = saved
        B = x.shape[0]
        fbk = self._filterbank(L.windows, x)
        zeros = x.new_zeros

        def no_window_grads(N):
            return (zeros(B, N, L.H), zeros(B, N, L.W), zeros(B))

        # nothing flows into step T: no read at T, no encoder or decoder after the last step
        read_grads = no_window_grads(L.read_N) if L.read_N is not None else ()
        carry = (self._to_hcw(dc), zeros(B, 4 * L.D), zeros(B, 4 * L.E), zeros(B, L.E),
                 zeros(B, L.D), read_grads)
        dP, dgates_dec, dhe, dgates_enc = self._gradient_rows(B, w)
        for t in reversed(range(L.T)):
            carry = self._bwd(L, fbk, w, x4, u[t], dkl[t], steps[t], passes[t], passes[t + 1],
                              carry, (dP[t], dgates_dec[t], dhe[t], dgates_enc[t]), t == L.T - 1)
        # P_{-1} = b_h fed step 0's encoder, decoder and read window
        _, dgates_dec0, dgates_enc0, _, _, read_grads = carry
        d_init = [dgates_dec0, dgates_enc0]
        if fbk is not None:
            grads = [read_grads] if L.read_N is not None else []
            if L.write_N is not None:
                grads.append(no_window_grads(L.write_N))
            d_init.append(fbk.backward(grads, passes[0]).view(B, -1))
        d_init = torch.cat(d_init, dim=1).sum(0)
        db_h = dP.sum((0, 1))
        db_h[:d_init.shape[0]] += d_init

        def bulk(g: Tensor, a: Tensor) -> Tensor:
            # sum over t and b of g_tb^T a_tb: one (out, T*B) x (T*B, in) matmul
            return g.reshape(-1, g.shape[-1]).t() @ a.reshape(-1, a.shape[-1])

        column = list(zip(*steps))
        dW_h = bulk(dP, torch.stack(column[13]))
        dW_e = bulk(dhe, torch.stack(column[5]))
        dW_z = bulk(dgates_dec, torch.stack(column[9]))
        if L.read_N is not None:
            dW_r = bulk(dgates_enc, torch.stack([r for _, _, r in column[1]]))
            dW_rx = None
        else:
            dW_r = -bulk(dgates_enc, torch.stack(column[0]))
            dW_rx = dgates_enc.sum(0).t() @ x_hcw
        return dW_h, db_h, dW_e, dhe.sum((0, 1)), dW_z, dW_r, dW_rx

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, u: Tensor | None = None, return_attention: bool = False):
        """Same as `DrawModel.sample`: canvases (n_iter, n, x_dim), and with return_attention
        the write windows {'center_y', 'center_x', 'delta', 'sigma', 'gamma'}, each (n_iter, n).
        """
        L, m = self.L, self.model
        if return_attention and L.write_N is None:
            raise ValueError("return_attention needs a model with write attention (write_N)")
        w = self._weights()
        z_all = self._noise(u, n, w.h)
        # only the decoder's recurrence and the write heads: the rows of W_h that h_dec needs
        # when nothing is read
        rows = torch.cat([torch.arange(L.enc_start, device=w.h.device),
                          torch.arange(L.patch_start - 5 * (L.write_N is not None), w.h.shape[0],
                                       device=w.h.device)])
        W_s, b_s = w.h.index_select(0, rows), w.h_bias.index_select(0, rows)
        fbk = self._filterbank((L.write_N,), w.h) if L.write_N is not None else None
        heads_start = L.enc_start
        c = w.h.new_zeros(n, L.X)                                           # (H, C, W) order
        h_dec = w.h.new_zeros(n, L.D)
        cell_dec = torch.zeros_like(h_dec)
        P = b_s.expand(n, -1)
        canvases, windows = [], []
        for t in range(L.T):
            h_dec, cell_dec, _, _ = _lstm(torch.addmm(P[:, :heads_start], z_all[t], w.z.t()),
                                          cell_dec)                         # eq. 7
            P = torch.addmm(b_s, h_dec, W_s.t())
            heads = P[:, heads_start:]
            if fbk is not None:                                             # eqs. 8, 29
                a = heads[:, :5]
                (FY, FX, gamma), = fbk.windows(fbk.forward(a[:, None]))
                N = L.write_N
                patch = heads[:, 5:] / gamma[:, None]
                cols = (patch.reshape(n, N * L.C, N) @ FX).view(n, N, L.C * L.W)
                c = torch.baddbmm(c.view(n, L.H, L.C * L.W), FY.transpose(1, 2), cols).view(n, -1)
                if return_attention:
                    windows.append(torch.stack(m.writer.zoomer.nn2att(a)))  # (5, n)
            else:                                                           # eqs. 8, 18
                c = c + heads
            canvases.append(torch.sigmoid(c))
        canvases = self._to_chw(torch.stack(canvases).view(L.T * n, L.X)).view(L.T, n, L.X)
        if not return_attention:
            return canvases
        windows = torch.stack(windows, dim=1)                               # (5, T, n)
        names = ("center_y", "center_x", "delta", "sigma", "gamma")
        return canvases, dict(zip(names, windows.unbind(0)))


def accelerate(model: DrawModel, *, compile: bool | str = False,
               flush_denormal: bool = True) -> FastDraw:
    """The fast path for a model: a callable with the signature and results of `model.forward`.

    It shares the model's parameters (nothing is copied; optimizers and checkpoints keep working
    on the model) and matches the plain path up to float rounding. `.sample` mirrors
    `model.sample`.

    Parameters
    ----------
    model : DrawModel
        Built by `DrawModel.from_config`.
    compile : bool or str
        Also compile one step's forward and backward with `torch.compile` (inductor); a string
        is passed as its `mode`. On 2 CPU cores it did not repay its compile time (about a
        minute; see bench/README.md). It is meant for GPUs, where it fuses each step's small
        kernels; bench/gpu_check.py measures whether it does.
    flush_denormal : bool
        On CPU, call `torch.set_flush_denormal(True)`, which is process-wide: floats below
        1.2e-38 are treated as 0. The far tails of the Gaussian filterbanks are such numbers,
        and x86 CPUs compute on them many times slower; no result above that magnitude changes.

    Returns
    -------
    FastDraw
        Call it as `c, kl = fast(x, u=None)`; sample with `fast.sample(n, u=None, ...)`.

    Example
    -------
    >>> fast = accelerate(model)
    >>> c, kl = fast(x)
    >>> nll_bound(x, c, kl).mean().backward()      # gradients land in model.parameters()
    """
    if flush_denormal and next(model.parameters()).device.type == "cpu":
        torch.set_flush_denormal(True)
    return FastDraw(model, compile=compile)
