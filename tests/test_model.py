"""The DRAW model: the bound (eqs. 9-12), reproducibility, gradients, parameter count, round trips."""
import copy
import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence
from torch.func import functional_call

from draw.bricks import AttentionReader, AttentionWriter, Qsampler, Reader, Writer
from draw.model import ConfigError, DrawConfig, DrawModel, nll_bound

TINY = dict(channels=1, height=8, width=7, n_iter=3, enc_dim=16, dec_dim=12, z_dim=5)
CONFIGS = {
    "no-attention": DrawConfig(**TINY),
    "attention": DrawConfig(**TINY, read_N=2, write_N=3),
    "colour-attention": DrawConfig(**(TINY | dict(channels=3)), read_N=3, write_N=4),
    # beyond the paper: P(Z_t | h_{t-1}^dec) learned (bricks.LearnedPrior)
    "learned-prior": DrawConfig(**TINY, read_N=2, write_N=3, learned_prior=True),
}


def make(name, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return DrawModel.from_config(CONFIGS[name]).to(dtype)


def batch(cfg, B=4, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, cfg.x_dim, generator=g, dtype=dtype).bernoulli(generator=g)
    u = torch.randn(cfg.n_iter, B, cfg.z_dim, generator=g, dtype=dtype)
    return x, u


@pytest.mark.parametrize("name", CONFIGS)
def test_shapes_and_bricks(name):
    cfg = CONFIGS[name]
    model = make(name)
    x, u = batch(cfg)
    c, kl = model(x, u)
    assert c.shape == (4, cfg.x_dim) and kl.shape == (cfg.n_iter, 4)
    assert isinstance(model.reader, AttentionReader if cfg.read_N else Reader)
    assert isinstance(model.writer, AttentionWriter if cfg.write_N else Writer)
    assert model.config == cfg


def reference_forward(model, x, u):
    """c_T and the KL terms (eqs. 3-11) written out from the paper for a model's parameters:
    the LSTM equations by hand, the filterbanks as exp and normalise (eqs. 19-26), the KL in the
    paper's form (eq. 11). Independent of the bricks' code; float64. With a learned prior, the
    decoder's input is z_t = m_t + s_t z'_t and the KL is torch's, of z_t's two Gaussians."""
    cfg, P = model.config, dict(model.named_parameters())
    B, C, H, W = x.shape[0], cfg.channels, cfg.height, cfg.width

    def linear(name, v):
        return v @ P[name + ".weight"].T + P[name + ".bias"]

    def lstm(name, v, h, cell):
        gates = (v @ P[name + ".weight_ih"].T + P[name + ".bias_ih"]
                 + h @ P[name + ".weight_hh"].T + P[name + ".bias_hh"])        # (i, f, g, o)
        i, f, g, o = gates.chunk(4, dim=1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(cell), cell

    def filterbanks(l, N):                                          # eqs. 21-26
        gy, gx, log_delta, log_sigma2, log_gamma = l.unbind(1)
        delta = (max(H, W) - 1) / max(N - 1, 1) * torch.exp(log_delta)
        sigma = torch.exp(log_sigma2 / 2)
        i = torch.arange(1, N + 1, dtype=x.dtype)
        F = []
        for g, A in (((H + 1) / 2 * (gy + 1) - 1, H), ((W + 1) / 2 * (gx + 1) - 1, W)):
            mu = g[:, None] + (i - N / 2 - 0.5) * delta[:, None]               # (B, N)
            a = torch.arange(A, dtype=x.dtype)
            f = torch.exp(-(a - mu[:, :, None]) ** 2 / (2 * sigma[:, None, None] ** 2))
            F.append(f / f.sum(-1, keepdim=True))                              # (B, N, A)
        return F[0], F[1], torch.exp(log_gamma)

    cell_enc = torch.zeros(B, cfg.enc_dim, dtype=x.dtype)
    cell_dec = torch.zeros(B, cfg.dec_dim, dtype=x.dtype)
    if cfg.learned_initial_state:               # section 2.2: learned biases, for every image
        c, h_enc, h_dec = (P[n].expand(B, -1) for n in ("c_0", "h_0_enc", "h_0_dec"))
    else:
        c, h_enc, h_dec = torch.zeros_like(x), cell_enc, cell_dec
    kl = []
    for t in range(cfg.n_iter):
        x_hat = x - torch.sigmoid(c)                                            # eq. 3
        if cfg.read_N:                                                          # eq. 27
            FY, FX, gamma = filterbanks(linear("reader.readout", h_dec), cfg.read_N)
            r = torch.cat([torch.einsum("bnh,bchw,bmw->bcnm", FY, v.view(B, C, H, W), FX)
                           .flatten(1) for v in (x, x_hat)], 1) * gamma[:, None]
        else:                                                                   # eq. 17
            r = torch.cat([x, x_hat], 1)
        h_enc, cell_enc = lstm("encoder", torch.cat([r, h_dec], 1), h_enc, cell_enc)  # eq. 5
        mean = linear("sampler.mean_transform", h_enc)                          # eq. 1
        log_sigma = linear("sampler.log_sigma_transform", h_enc)                # eq. 2
        z = mean + torch.exp(log_sigma) * u[t]                                  # eq. 6
        if cfg.learned_prior:           # P(Z_t | h_{t-1}^dec) = N(m_t, s_t); z was z'_t
            m = linear("prior.mean_transform", h_dec)
            s = torch.exp(linear("prior.log_sigma_transform", h_dec))
            z = m + s * z
            kl.append(kl_divergence(Normal(m + s * mean, s * torch.exp(log_sigma)),
                                    Normal(m, s)).sum(1))
        else:
            kl.append(0.5 * (mean ** 2 + torch.exp(2 * log_sigma) - 2 * log_sigma - 1).sum(1))
        h_dec, cell_dec = lstm("decoder", z, h_dec, cell_dec)                   # eq. 7
        if cfg.write_N:                                                         # eqs. 28-29
            N = cfg.write_N
            FY, FX, gamma = filterbanks(linear("writer.z_trafo", h_dec), N)
            w = linear("writer.w_trafo", h_dec).view(B, C, N, N)
            c = c + torch.einsum("bnh,bcnm,bmw->bchw", FY, w, FX).flatten(1) / gamma[:, None]
        else:                                                                   # eq. 18
            c = c + linear("writer.transform", h_dec)                           # eq. 8
    return c, torch.stack(kl)


@pytest.mark.parametrize("name", CONFIGS)
def test_forward_and_gradients_equal_the_paper_written_out(name):
    cfg = CONFIGS[name]
    model = make(name)
    with torch.no_grad():       # move off the init (windows, gates) without leaving the image
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    x, u = batch(cfg)
    c, kl = model(x, u)
    c_ref, kl_ref = reference_forward(model, x, u)
    torch.testing.assert_close(c, c_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-10, atol=1e-12)
    params = list(model.parameters())
    g = torch.autograd.grad(nll_bound(x, c, kl).sum(), params)
    g_ref = torch.autograd.grad(nll_bound(x, c_ref, kl_ref).sum(), params)
    for (n, _), a, b in zip(model.named_parameters(), g, g_ref):
        assert b.abs().max() > 0, n
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=n)


class GatedReader(AttentionReader):
    """A researcher's reader: the glimpse times a learnt gate, a parameter DRAW does not have."""

    def __init__(self, *args):
        super().__init__(*args)
        self.gate = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, x_hat, h_dec):
        return self.gate * super().forward(x, x_hat, h_dec)


def test_a_subclassed_reader_trains_with_its_own_maths():
    """Training goes through the bricks, so an extra parameter gets its gradient (there is no
    second copy of the model that would skip it)."""
    cfg = CONFIGS["attention"]
    model = make("attention")
    with torch.no_grad():       # larger weights than the init: the glimpse matters more
        for p in model.parameters():
            p.normal_(std=0.3)
    gated = DrawModel(cfg.n_iter, GatedReader(cfg.x_dim, cfg.dec_dim, cfg.channels, cfg.height,
                                              cfg.width, cfg.read_N),
                      model.encoder, model.sampler, model.decoder, model.writer,
                      learned_initial_state=True).double()
    gated.reader.readout.load_state_dict(model.reader.readout.state_dict())
    with torch.no_grad():
        for name in ("c_0", "h_0_enc", "h_0_dec"):
            getattr(gated, name).copy_(getattr(model, name))
    x, u = batch(cfg)
    c, kl = gated(x, u)
    nll_bound(x, c, kl).sum().backward()
    g = gated.reader.gate.grad
    assert g is not None and torch.isfinite(g) and g != 0
    # the gate's gradient is that of its own maths: a central difference of the bound
    with torch.no_grad():
        bounds = []
        for d in (1e-3, -1e-3):
            gated.reader.gate.add_(d)
            bounds.append(nll_bound(x, *gated(x, u)).sum())
            gated.reader.gate.sub_(d)
    torch.testing.assert_close(g, (bounds[0] - bounds[1]) / 2e-3, rtol=1e-4, atol=0)
    # gate = 1 is the plain reader
    with torch.no_grad():
        gated.reader.gate.fill_(1.0)
        torch.testing.assert_close(gated(x, u)[0], model(x, u)[0], rtol=0, atol=0)
    optimizer = torch.optim.Adam(gated.parameters(), lr=1e-2)
    optimizer.step()
    assert gated.reader.gate.item() != 1.0


def test_without_attention_the_x_part_of_the_encoder_is_computed_once_with_the_same_result():
    """eq. 17 hands the encoder x whole at every glimpse: its share of the encoder's input
    product, computed once per `glimpses`, gives what the brick-by-brick step gives."""
    cfg = CONFIGS["no-attention"]
    model = make("no-attention")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    x, u = batch(cfg)
    x_part, rest = model.encoder_x_gates(x)
    assert x_part.shape == (4, 4 * cfg.enc_dim)
    assert rest.shape == (4 * cfg.enc_dim, cfg.x_dim + cfg.dec_dim)
    c, kl = model(x, u)
    params = list(model.parameters())
    g = torch.autograd.grad(nll_bound(x, c, kl).sum(), params)
    model.encoder_x_gates = lambda x: None          # every glimpse through reader and LSTMCell
    c_ref, kl_ref = model(x, u)
    g_ref = torch.autograd.grad(nll_bound(x, c_ref, kl_ref).sum(), params)
    torch.testing.assert_close(c, c_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-12, atol=1e-12)
    for (n, _), a, b in zip(model.named_parameters(), g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=n)


class HalfErrorReader(Reader):
    """A researcher's plain reader: the error image halved."""

    def forward(self, x, x_hat, h_dec):
        return super().forward(x, x_hat / 2, h_dec)


def test_only_the_plain_reader_has_its_x_part_computed_once():
    """A subclass of Reader, or an attention reader, runs its own maths at every glimpse."""
    x, _ = batch(CONFIGS["attention"])
    assert make("attention").encoder_x_gates(x) is None
    cfg = CONFIGS["no-attention"]
    model = make("no-attention")
    half = DrawModel(cfg.n_iter, HalfErrorReader(cfg.x_dim), model.encoder, model.sampler,
                     model.decoder, model.writer, learned_initial_state=True).double()
    x, u = batch(cfg)
    assert half.encoder_x_gates(x) is None
    assert not torch.equal(half(x, u)[0], model(x, u)[0])


@pytest.mark.parametrize("name", CONFIGS)
def test_an_empty_batch_gives_empty_outputs_and_zero_gradients(name):
    cfg = CONFIGS[name]
    model = make(name)
    x = torch.zeros(0, cfg.x_dim, dtype=torch.float64)
    c, kl = model(x)
    assert c.shape == (0, cfg.x_dim) and kl.shape == (cfg.n_iter, 0)
    nll_bound(x, c, kl).sum().backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
    assert model.log_weight(x).shape == (0,)


def test_noise_has_the_one_shape_and_follows_the_generator():
    model = make("attention")
    like = torch.zeros(1, dtype=torch.float32)
    u = model.noise(6, like, torch.Generator().manual_seed(3))
    assert u.shape == model.noise_shape(6) == (3, 6, 5) and u.dtype == torch.float32
    assert torch.equal(u, model.noise(6, like, torch.Generator().manual_seed(3)))
    torch.manual_seed(4)
    c1, _ = model(torch.zeros(6, 56, dtype=torch.float64))
    torch.manual_seed(4)
    u = model.noise(6, torch.zeros(1, dtype=torch.float64))
    assert torch.equal(c1, model(torch.zeros(6, 56, dtype=torch.float64), u)[0])


@pytest.mark.parametrize("name", CONFIGS)
def test_same_noise_gives_identical_outputs(name):
    cfg = CONFIGS[name]
    model = make(name)
    x, u = batch(cfg)
    c1, kl1 = model(x, u)
    c2, kl2 = model(x, u.clone())
    assert torch.equal(c1, c2) and torch.equal(kl1, kl2)
    c3, _ = model(x, u + 1.0)
    assert not torch.equal(c1, c3)
    s1 = model.sample(3, u[:, :3])
    assert torch.equal(s1, model.sample(3, u[:, :3].clone()))


@pytest.mark.parametrize("name", CONFIGS)
def test_batched_equals_per_example(name):
    cfg = CONFIGS[name]
    model = make(name)
    x, u = batch(cfg, B=3)
    c, kl = model(x, u)
    for b in range(3):
        cb, klb = model(x[b:b + 1], u[:, b:b + 1])
        torch.testing.assert_close(cb, c[b:b + 1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(klb, kl[:, b:b + 1], rtol=1e-12, atol=1e-12)


def test_kl_is_the_closed_form_and_nonnegative():
    """eq. 11 against torch.distributions, and a Monte-Carlo estimate of E_q[log q - log p]."""
    torch.manual_seed(0)
    sampler = Qsampler(6, 4).double()
    for p in sampler.parameters():
        torch.nn.init.normal_(p, std=0.5)
    h = torch.randn(3, 6, dtype=torch.float64)
    mean, log_sigma = sampler(h)
    q, prior = Normal(mean, log_sigma.exp()), Normal(torch.zeros_like(mean), torch.ones_like(mean))
    kl = sampler.kl(*sampler(h))
    assert (kl >= 0).all()
    torch.testing.assert_close(kl, kl_divergence(q, prior).sum(1), rtol=1e-12, atol=1e-12)
    K = 200_000
    u = torch.randn(K, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = mean + log_sigma.exp() * u
    mc = (q.log_prob(z) - prior.log_prob(z)).sum(-1)                          # (K, 3)
    stderr = mc.std(0) / math.sqrt(K)
    assert ((mc.mean(0) - kl).abs() < 5 * stderr).all()


def test_kl_is_zero_exactly_at_the_prior():
    sampler = Qsampler(3, 7).double()
    for p in sampler.parameters():
        torch.nn.init.zeros_(p)
    kl = sampler.kl(*sampler(torch.randn(2, 3, dtype=torch.float64)))
    assert torch.equal(kl, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("name", CONFIGS)
def test_zero_weights_give_exactly_ln2_per_pixel(name):
    """c_T = 0 gives p = 1/2 on every pixel and Q = P gives KL = 0: L = C*H*W*ln 2."""
    cfg = CONFIGS[name]
    model = make(name)
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    x, u = batch(cfg)
    c, kl = model(x, u)
    expected = torch.full((4,), cfg.x_dim * math.log(2), dtype=torch.float64)
    torch.testing.assert_close(nll_bound(x, c, kl), expected, rtol=1e-15, atol=1e-12)


@pytest.mark.parametrize("name", CONFIGS)
def test_importance_weights_average_to_the_bound(name):
    """E_u[-log_weight(x, u)] = bound: log_weight uses the sampled z, the bound the closed-form KL."""
    cfg = CONFIGS[name]
    model = make(name)
    with torch.no_grad():
        for p in model.parameters():   # larger weights than the init so the KL is far from zero
            p.normal_(std=0.3)
    x, _ = batch(cfg, B=2)
    K = 4000
    g = torch.Generator().manual_seed(5)
    xs = x.repeat(K, 1)
    u = torch.randn(cfg.n_iter, 2 * K, cfg.z_dim, dtype=torch.float64, generator=g)
    with torch.no_grad():
        neg_w = -model.log_weight(xs, u).view(K, 2)
        c, kl = model(xs, u)
        bound = nll_bound(xs, c, kl).view(K, 2)
    stderr = (neg_w - bound).std(0) / math.sqrt(K)
    assert ((neg_w.mean(0) - bound.mean(0)).abs() < 5 * stderr + 1e-9).all()
    assert (stderr > 0).all()


@pytest.mark.parametrize("name", ["no-attention", "attention"])
def test_gradcheck_float64(name):
    """Analytic gradients of the bound w.r.t. the input and every parameter match finite differences."""
    cfg = DrawConfig(channels=1, height=5, width=4, n_iter=2, enc_dim=3, dec_dim=3, z_dim=2,
                     read_N=2 if name == "attention" else None,
                     write_N=3 if name == "attention" else None)
    torch.manual_seed(0)
    model = DrawModel.from_config(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, cfg.x_dim, dtype=torch.float64, generator=g).requires_grad_()
    u = torch.randn(cfg.n_iter, 2, cfg.z_dim, dtype=torch.float64, generator=g)

    def bound(x, *params):
        c, kl = functional_call(model, dict(zip(names, params)), (x, u))
        return nll_bound(x, c, kl)

    assert torch.autograd.gradcheck(bound, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4,
                                     fast_mode=True)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_parameter_gets_a_gradient(name):
    cfg = CONFIGS[name]
    model = make(name, dtype=torch.float32)
    x, u = batch(cfg, dtype=torch.float32)
    c, kl = model(x, u)
    nll_bound(x, c, kl).mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


def test_canonical_parameter_count():
    """28x28, read 2x2, write 5x5, enc/dec 256, z 100: counted by hand."""
    model = DrawModel.from_config(DrawConfig(read_N=2, write_N=5, enc_dim=256, dec_dim=256, z_dim=100))
    read_head = 256 * 5 + 5                                 # eq. 21 for the reader
    read_dim = 2 * 2 * 2                                    # [r(x), r(x_hat)], 2x2 each
    lstm = lambda n_in, n: 4 * n * (n_in + n) + 2 * 4 * n   # W_ih, W_hh, b_ih, b_hh
    encoder = lstm(read_dim + 256, 256)
    sampler = 2 * (256 * 100 + 100)                         # mean and log sigma
    decoder = lstm(100, 256)
    writer = (256 * 25 + 25) + (256 * 5 + 5)                # w_t (eq. 28) and its window head
    initial_state = 784 + 256 + 256                         # c_0, h_0^enc, h_0^dec (sec. 2.2)
    expected = read_head + encoder + sampler + decoder + writer + initial_state
    assert expected == 962_811
    assert sum(p.numel() for p in model.parameters()) == expected
    no_att = DrawModel.from_config(DrawConfig(enc_dim=256, dec_dim=256, z_dim=100))
    expected_no_att = (lstm(2 * 784 + 256, 256) + sampler + decoder + (256 * 784 + 784)
                       + initial_state)
    assert sum(p.numel() for p in no_att.parameters()) == expected_no_att
    prior = 2 * (256 * 100 + 100)                           # m_t and log s_t (LearnedPrior)
    with_prior = DrawModel.from_config(DrawConfig(read_N=2, write_N=5, enc_dim=256, dec_dim=256,
                                                  z_dim=100, learned_prior=True))
    assert sum(p.numel() for p in with_prior.parameters()) == expected + prior
    zero_start = DrawModel.from_config(DrawConfig(read_N=2, write_N=5,
                                                  learned_initial_state=False))
    assert sum(p.numel() for p in zero_start.parameters()) == expected - initial_state


@pytest.mark.parametrize("name", CONFIGS)
def test_config_and_state_dict_round_trip(name):
    cfg = CONFIGS[name]
    model = make(name, dtype=torch.float32, seed=3)
    clone = DrawModel.from_config(DrawConfig.from_dict(cfg.to_dict()))
    clone.load_state_dict(model.state_dict())
    x, u = batch(cfg, dtype=torch.float32)
    c1, kl1 = model(x, u)
    c2, kl2 = clone(x, u)
    assert torch.equal(c1, c2) and torch.equal(kl1, kl2)


@pytest.mark.parametrize("name", CONFIGS)
def test_sample_canvases(name):
    cfg = CONFIGS[name]
    model = make(name, dtype=torch.float32)
    canvases = model.sample(5)
    assert canvases.shape == (cfg.n_iter, 5, cfg.x_dim)
    assert ((canvases > 0) & (canvases < 1)).all()
    if cfg.write_N is None:
        with pytest.raises(ValueError, match="write attention"):
            model.sample(5, return_attention=True)
        return
    u = torch.randn(cfg.n_iter, 5, cfg.z_dim)
    canvases, att = model.sample(5, u, return_attention=True)
    assert torch.equal(canvases, model.sample(5, u))
    assert set(att) == {"center_y", "center_x", "delta", "sigma", "gamma"}
    assert all(v.shape == (cfg.n_iter, 5) for v in att.values())
    assert (att["delta"] > 0).all() and (att["sigma"] > 0).all() and (att["gamma"] > 0).all()


def test_sample_canvases_accumulate_the_writes():
    """c_t = c_{t-1} + write(h_dec_t): with a zero decoder every step adds the writer's bias."""
    cfg = CONFIGS["no-attention"]
    model = make("no-attention")
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.zero_()
        model.writer.transform.weight.zero_()
        model.writer.transform.bias.fill_(0.25)
    canvases = model.sample(2)
    steps = torch.arange(1, cfg.n_iter + 1, dtype=torch.float64)
    expected = torch.sigmoid(0.25 * steps)[:, None, None].expand(-1, 2, cfg.x_dim)
    torch.testing.assert_close(canvases, expected, rtol=1e-15, atol=1e-15)


def test_the_learned_initial_state_starts_the_canvas_and_both_lstms():
    """Section 2.2: c_0, h_0^enc, h_0^dec are learned biases, the same for every image. At zero
    the model is the one without them (a file from before them continues unchanged); the
    decoder never sees the canvas, so c_0 shifts every sampled canvas by itself exactly."""
    cfg = CONFIGS["attention"]
    torch.manual_seed(0)
    zero_start = DrawModel.from_config(dataclasses.replace(cfg, learned_initial_state=False))
    zero_start = zero_start.double()
    assert not hasattr(zero_start, "c_0")
    model = copy.deepcopy(zero_start)
    rng = torch.get_rng_state()
    assert model.learn_initial_state() is model and model.learn_initial_state() is model
    assert torch.equal(torch.get_rng_state(), rng)          # draws nothing: in place
    assert model.config == cfg and model.c_0.dtype == torch.float64
    x, u = batch(cfg)
    for a, b in zip(model(x, u), zero_start(x, u)):
        assert torch.equal(a, b)
    with torch.no_grad():
        model.c_0.normal_()
    z = torch.randn(cfg.n_iter, 3, cfg.z_dim, dtype=torch.float64)
    logit = lambda p: torch.log(p) - torch.log1p(-p)
    torch.testing.assert_close(logit(model.sample(3, z)),
                               logit(zero_start.sample(3, z)) + model.c_0, rtol=0, atol=1e-9)
    # each of the three moves the bound, and gets its gradient
    nll_bound(x, *model(x, u)).sum().backward()
    for p in (model.c_0, model.h_0_enc, model.h_0_dec):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # a config written before the field (every model file before 2026-12-06) had them at zero
    old = {k: v for k, v in cfg.to_dict().items() if k != "learned_initial_state"}
    assert DrawConfig.from_dict(old) == dataclasses.replace(cfg, learned_initial_state=False)
    assert DrawConfig.from_dict(cfg.to_dict()) == cfg and cfg.learned_initial_state


def test_the_learned_prior_starts_at_the_papers_and_is_the_prior_of_samples_and_weights():
    """Beyond the paper: P(Z_t | h_{t-1}^dec) = N(m_t, s_t). Grown onto a model it starts at
    N(0, I), so the model computes what it did; moved, samples decode m_t + s_t u_t, and the
    importance weight is log D(x | c_T) + log P(z) - log Q(z) in z_t's own Gaussians."""
    cfg = CONFIGS["learned-prior"]
    torch.manual_seed(0)
    paper = DrawModel.from_config(dataclasses.replace(cfg, learned_prior=False)).double()
    assert paper.prior is None
    model = copy.deepcopy(paper)
    rng = torch.get_rng_state()
    assert model.learn_prior() is model and model.learn_prior() is model
    assert torch.equal(torch.get_rng_state(), rng)          # draws nothing: in place
    assert model.config == cfg and model.prior.mean_transform.weight.dtype == torch.float64
    x, u = batch(cfg)
    for a, b in zip((*model(x, u), model.log_weight(x, u), model.sample(4, u)),
                    (*paper(x, u), paper.log_weight(x, u), paper.sample(4, u))):
        assert torch.equal(a, b)
    with torch.no_grad():
        for p in model.prior.parameters():
            p.normal_(std=0.3)
    # samples: z_t = m_t + s_t u_t from the decoder's last state, by hand with the bricks
    state = model.initial_state(4, x)
    for t in range(cfg.n_iter):
        h = state.h_dec
        z = model.prior.mean_transform(h) + torch.exp(model.prior.log_sigma_transform(h)) * u[t]
        h_dec, cell_dec = model.decoder(z, (h, state.cell_dec))
        state = state._replace(c=state.c + model.writer(h_dec), h_dec=h_dec, cell_dec=cell_dec)
    torch.testing.assert_close(model.sample(4, u)[-1], torch.sigmoid(state.c), rtol=0,
                               atol=1e-12)
    # the weight: the prior's and the posterior's log densities at the decoder's input z_t
    seen = {"prior": [], "posterior": []}
    hooks = [model.prior.register_forward_hook(
                 lambda m, args, out: seen["prior"].append((*args, out))),
             model.sampler.register_forward_hook(
                 lambda m, args, out: seen["posterior"].append(out))]
    log_w = model.log_weight(x, u)
    for h in hooks:
        h.remove()
    c = model(x, u)[0]
    log_w_ref = -nn.functional.binary_cross_entropy_with_logits(c, x, reduction="none").sum(1)
    for (h, z_prime, z), (mean, log_sigma) in zip(seen["prior"], seen["posterior"]):
        m, s = model.prior.mean_transform(h), torch.exp(model.prior.log_sigma_transform(h))
        torch.testing.assert_close(z, m + s * z_prime, rtol=0, atol=1e-12)
        posterior = Normal(m + s * mean, s * torch.exp(log_sigma))
        log_w_ref = log_w_ref + (Normal(m, s).log_prob(z) - posterior.log_prob(z)).sum(1)
    assert len(seen["prior"]) == cfg.n_iter
    torch.testing.assert_close(log_w, log_w_ref, rtol=1e-10, atol=1e-10)
    # a config written before the field (every model file before 2026-12-07) had N(0, I)
    old = {k: v for k, v in cfg.to_dict().items() if k != "learned_prior"}
    assert DrawConfig.from_dict(old) == dataclasses.replace(cfg, learned_prior=False)


def test_a_fresh_learned_prior_leaves_the_rest_a_paper_model_of_the_same_seed():
    """The prior draws nothing: a same-seed A/B of --learned-prior starts from the same other
    parameters and the same random state, so the two runs' training noise is the same too. Its
    parameters come last, where a grown model has them too: the optimizer's state in a
    checkpoint is by position."""
    cfg = CONFIGS["learned-prior"]
    torch.manual_seed(0)
    paper = DrawModel.from_config(dataclasses.replace(cfg, learned_prior=False))
    paper_rng = torch.get_rng_state()
    torch.manual_seed(0)
    model = DrawModel.from_config(cfg)
    assert torch.equal(torch.get_rng_state(), paper_rng)
    mine = model.state_dict()
    for name, p in paper.state_dict().items():
        assert torch.equal(mine[name], p), name
    assert all((p == 0).all() for p in model.prior.parameters())
    names = [n for n, _ in model.named_parameters()]
    assert names == [n for n, _ in paper.named_parameters()] + [
        "prior.mean_transform.weight", "prior.mean_transform.bias",
        "prior.log_sigma_transform.weight", "prior.log_sigma_transform.bias"]


def test_bad_noise_shape_raises():
    model = make("attention")
    x, u = batch(CONFIGS["attention"])
    with pytest.raises(ValueError, match="noise u must have shape"):
        model(x, u[:, :2])


@pytest.mark.parametrize("bad, field, problem", [
    (dict(n_iter=0), "n_iter", "must be a positive integer, got 0"),
    (dict(z_dim=-3), "z_dim", "must be a positive integer, got -3"),
    (dict(height=0), "height", "must be a positive integer, got 0"),
    (dict(enc_dim=2.5), "enc_dim", "must be a positive integer, got 2.5"),
    (dict(channels=True), "channels", "must be a positive integer, got True"),
    (dict(read_N=0), "read_N", "must be a positive integer, got 0"),
    (dict(write_N=29), "write_N", "must fit in the 28x28 image, got 29"),
    (dict(read_N=9, height=8), "read_N", "must fit in the 8x28 image, got 9"),
    (dict(learned_initial_state=1), "learned_initial_state", "must be true or false, got 1")])
def test_bad_config_raises(bad, field, problem):
    """DrawConfig is the one place that checks the model's sizes, from flags or a model file;
    its field and problem are what train-draw.py's error names its flag with."""
    with pytest.raises(ConfigError, match=f"^DrawConfig.{field} {problem}$") as info:
        DrawConfig(**bad)
    assert (info.value.field, info.value.problem) == (field, problem)


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown DrawConfig fields"):
        DrawConfig.from_dict(DrawConfig().to_dict() | {"attention": "2,5"})


def test_kl_keeps_float32_precision_near_the_prior():
    """Near sigma = 1 (where training starts) eq. 11 must not cancel to a few correct digits."""
    sampler = Qsampler(2, 100)
    with torch.no_grad():
        for p in sampler.parameters():
            p.zero_()
        sampler.log_sigma_transform.bias.fill_(1e-3)
        sampler.mean_transform.bias.fill_(1e-3)
    h = torch.zeros(1, 2)
    kl32 = sampler.kl(*sampler(h))
    kl64 = sampler.kl(*sampler.double()(h.double()))
    assert kl64.item() > 0
    # the old form, exp(2 log sigma) - 1, is 4% off here; expm1 leaves the O(log sigma^2) cancellation
    torch.testing.assert_close(kl32.double(), kl64, rtol=1e-4, atol=0)
