"""The fast path (draw.fast) against the plain path (DrawModel): same outputs, gradients, samples
and training steps, up to float rounding; and the benchmark's FLOP count."""
import importlib.util
import itertools
from pathlib import Path

import pytest
import torch

from draw.fast import FastDraw, accelerate
from draw.model import DrawConfig, DrawModel, nll_bound

# (channels, height, width): square, wide colour, tall colour
SHAPES = [(1, 6, 6), (3, 5, 7), (2, 8, 6)]
CONFIGS = [DrawConfig(channels=C, height=H, width=W, n_iter=4, enc_dim=7, dec_dim=9, z_dim=3,
                      read_N=r, write_N=w)
           for (C, H, W), r, w in itertools.product(SHAPES, [None, 2, 3], [None, 3, 1])]
# the first step is also the last; windows as large as the image
CONFIGS += [DrawConfig(height=5, width=7, n_iter=1, enc_dim=7, dec_dim=9, z_dim=3, read_N=2,
                       write_N=3),
            DrawConfig(height=5, width=7, n_iter=3, enc_dim=7, dec_dim=9, z_dim=3, read_N=5,
                       write_N=5)]


def config_id(cfg):
    return (f"C{cfg.channels}-{cfg.height}x{cfg.width}-T{cfg.n_iter}"
            f"-r{cfg.read_N}-w{cfg.write_N}")


@pytest.fixture(autouse=True)
def denormals_back_on():
    # accelerate() flushes denormals process-wide; leave other tests as they were
    yield
    torch.set_flush_denormal(False)


def make(cfg, dtype=torch.float64, std=0.5, seed=0):
    """A model with large random weights, so windows move and every path carries signal."""
    torch.manual_seed(seed)
    model = DrawModel.from_config(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def batch(cfg, B=5, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, cfg.x_dim, generator=g, dtype=dtype)
    u = torch.randn(cfg.n_iter, B, cfg.z_dim, generator=g, dtype=dtype)
    return x, u


def loss_of(x, c, kl):
    # weights per example and a square on kl: every output gets its own, non-uniform gradient
    weights = torch.arange(1, x.shape[0] + 1, dtype=x.dtype)
    return (weights * nll_bound(x, c, kl)).sum() + (kl ** 2).sum()


def grads(model, forward, x, u):
    c, kl = forward(x, u)
    return c, kl, torch.autograd.grad(loss_of(x, c, kl), list(model.parameters()))


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_outputs_and_gradients_equal_plain_in_float64(cfg):
    model = make(cfg)
    x, u = batch(cfg)
    c1, kl1, g1 = grads(model, model, x, u)
    c2, kl2, g2 = grads(model, FastDraw(model), x, u)
    torch.testing.assert_close(c2, c1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kl2, kl1, rtol=1e-10, atol=1e-12)
    for (name, _), a, b in zip(model.named_parameters(), g1, g2):
        # a zero gradient would make the comparison vacuous; with T = 1 the weights that
        # multiply h_0 = 0 (recurrences, read head) get none, in either path
        assert a.abs().max() > 0 or cfg.n_iter == 1, name
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("attention", [(2, 5), (None, None)], ids=["attention", "full"])
def test_float32_at_mnist_size_within_tolerance(attention):
    cfg = DrawConfig(n_iter=6, enc_dim=32, dec_dim=32, z_dim=8, read_N=attention[0],
                     write_N=attention[1])
    reference = make(cfg, std=0.1)             # float64
    model = make(cfg, std=0.1).float()         # the same weights in float32
    x, u = batch(cfg, B=10, dtype=torch.float32)
    c1, kl1, g1 = grads(reference, reference, x.double(), u.double())
    c2, kl2, g2 = grads(model, FastDraw(model), x, u)
    loss1, loss2 = loss_of(x.double(), c1, kl1), loss_of(x, c2, kl2)
    # measured: loss 6e-8, gradients 3e-6 at most, as for the plain path in float32
    assert abs(loss2.item() - loss1.item()) <= 1e-6 * abs(loss1.item())
    for (name, _), a, b in zip(model.named_parameters(), g1, g2):
        assert (b.double() - a).abs().max() <= 1e-5 * a.abs().max(), name


@pytest.mark.parametrize("cfg", CONFIGS[:9] + CONFIGS[-2:], ids=config_id)
def test_sampling_equals_plain(cfg):
    model = make(cfg)
    fast = FastDraw(model)
    u = torch.randn(cfg.n_iter, 4, cfg.z_dim, dtype=torch.float64)
    torch.testing.assert_close(fast.sample(4, u), model.sample(4, u), rtol=1e-10, atol=1e-12)
    if cfg.write_N is not None:
        canvases1, att1 = model.sample(4, u, return_attention=True)
        canvases2, att2 = fast.sample(4, u, return_attention=True)
        torch.testing.assert_close(canvases2, canvases1, rtol=1e-10, atol=1e-12)
        assert att2.keys() == att1.keys()
        for k in att1:
            assert att2[k].shape == (cfg.n_iter, 4)
            torch.testing.assert_close(att2[k], att1[k], rtol=1e-10, atol=1e-12)


def test_drawn_noise_is_the_plain_paths():
    cfg = CONFIGS[4]
    model = make(cfg)
    fast = FastDraw(model)
    x, _ = batch(cfg)
    torch.manual_seed(7)
    c1, kl1 = model(x)
    torch.manual_seed(7)
    c2, kl2 = fast(x)
    torch.testing.assert_close(c2, c1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kl2, kl1, rtol=1e-10, atol=1e-12)
    torch.manual_seed(7)
    samples = model.sample(3)
    torch.manual_seed(7)
    torch.testing.assert_close(fast.sample(3), samples, rtol=1e-10, atol=1e-12)


def test_shares_the_models_parameters():
    cfg = CONFIGS[4]
    model = make(cfg)
    keys = list(model.state_dict())
    fast = accelerate(model)
    assert list(model.state_dict()) == keys and not isinstance(fast, torch.nn.Module)
    x, u = batch(cfg)
    with torch.no_grad():                      # the fast path reads the current values
        model.decoder.weight_hh.add_(0.3)
    c1, _ = model(x, u)
    c2, _ = fast(x, u)
    torch.testing.assert_close(c2, c1, rtol=1e-10, atol=1e-12)


def test_adam_steps_through_either_path_agree():
    cfg = CONFIGS[13]
    plain, twin = make(cfg), make(cfg)
    fast = accelerate(twin, flush_denormal=False)
    x, u = batch(cfg)
    for model, forward in ((plain, plain), (twin, fast)):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(3):
            c, kl = forward(x, u)
            optimizer.zero_grad()
            nll_bound(x, c, kl).mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
    before = make(cfg).state_dict()
    for key, value in plain.state_dict().items():
        assert not torch.equal(value, before[key]), key
        torch.testing.assert_close(twin.state_dict()[key], value, rtol=1e-8, atol=1e-10)


def test_bad_input_is_refused():
    cfg = CONFIGS[4]
    model = make(cfg)
    fast = FastDraw(model)
    x, u = batch(cfg)
    with pytest.raises(ValueError, match="noise u must have shape"):
        fast(x, u[:, :2])
    with pytest.raises(ValueError, match="x must have shape"):
        fast(x[:, :-1])
    with pytest.raises(ValueError, match="parameters only"):
        fast(x.requires_grad_(), u)
    with pytest.raises(ValueError, match="return_attention"):
        FastDraw(make(CONFIGS[0])).sample(2, return_attention=True)
    parts = make(cfg)
    bare = DrawModel(cfg.n_iter, parts.reader, parts.encoder, parts.sampler, parts.decoder,
                     parts.writer)
    with pytest.raises(ValueError, match="from_config"):
        FastDraw(bare)


def test_flush_denormal_is_asked_for():
    model = make(CONFIGS[4])
    tiny = torch.tensor([1e-40])
    torch.set_flush_denormal(False)
    accelerate(model, flush_denormal=False)
    assert (tiny * 1.0).item() > 0
    accelerate(model)
    if torch.set_flush_denormal(True):         # False where the CPU cannot flush
        assert (tiny * 1.0).item() == 0


def test_compiled_steps_trace_and_agree(monkeypatch):
    # the "eager" backend runs TorchDynamo's tracing, guards and recompiles without inductor's
    # code generation, which takes minutes on 2 cores; the GPU check runs inductor itself
    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile(fn, backend="eager", **kw))
    cfg = CONFIGS[13]
    model = make(cfg)
    x, u = batch(cfg)
    c1, kl1, g1 = grads(model, model, x, u)
    c2, kl2, g2 = grads(model, FastDraw(model, compile=True), x, u)
    torch.testing.assert_close(c2, c1, rtol=1e-10, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)


def load_bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "bench.py"
    spec = importlib.util.spec_from_file_location("draw_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_flop_count_matches_hand_count():
    bench = load_bench()
    cfg = DrawConfig(n_iter=64, read_N=2, write_N=5)
    # per step and image, multiply-adds: encoder (8 + 256 + 256) x 1024, decoder
    # (100 + 256) x 1024, sampler 256 x 200, heads 256 x (5 + 5 + 25), read 2x28x56 + 4x28x2,
    # write 5x5x28 + 28x5x28; times 2 FLOPs, 3 for forward and backward, 64 steps
    macs = 520 * 1024 + 356 * 1024 + 256 * 200 + 256 * 35 + 3136 + 224 + 700 + 3920
    assert bench.train_flops_per_image(cfg) == 6 * macs * 64
    assert round(bench.train_flops_per_image(cfg) / 1e6, 1) == 370.6


def test_benchmark_runs_and_reports_every_path(capsys):
    bench = load_bench()
    bench.main(quick=True, niters="2", batch_size=3, threads=None, device="cpu", repeats=1,
               warmup=1, compile=False, keep_denormals=False, read_N=2, write_N=3, enc_dim=6,
               dec_dim=5, z_dim=2, seed=0)
    out = capsys.readouterr().out
    assert "GFLOP/s" in out
    rows = [line.split() for line in out.splitlines()
            if line.startswith("  2 ") and "ceiling" not in line]
    assert [row[1] for row in rows] == ["plain", "fast", "plain,"]
    assert rows[0][3] == "1.00" and rows[0][5] == "1.00"   # plain against itself
