"""bench/naive.py, the naive port that the package's speed is measured against, is the same model
as DrawModel: with a DrawModel's parameters copied in and the same noise, the same bound and the
same gradients (bench/naive.py's docstring says where the two compute differently)."""
import dataclasses

import pytest
import torch

from draw.model import DrawConfig, DrawModel, nll_bound

# a non-square image (height 10, width 12), so that a swap of x and y or of A and B shows
CFG = DrawConfig(n_iter=3, height=10, width=12, read_N=2, write_N=3, enc_dim=16, dec_dim=12,
                 z_dim=5)


def models(naive, dtype):
    """A DrawModel whose parameters are moved off their initialisation, so that the windows sit
    off-centre and differ in x and y (at the initialisation g~_X = g~_Y = 0, which would hide
    their swap), and the naive port with those parameters."""
    torch.manual_seed(0)
    model = DrawModel.from_config(CFG).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    port = naive.NaiveDraw.from_config(CFG).to(dtype)
    naive.load_draw_state(port, model.state_dict())
    return model, port


def batch(dtype):
    generator = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((4, CFG.x_dim), 0.3), generator=generator).to(dtype)
    u = torch.randn(CFG.n_iter, 4, CFG.z_dim, generator=generator).to(dtype)
    return x, u


def draw_loss(model, x, u):
    c, kl = model(x, u)
    return nll_bound(x, c, kl).mean()


def relative_difference(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("dtype, eps, tol", [
    (torch.float64, 0.0, 1e-12),    # the same maths: agreement to float64 rounding (~1e-15)
    (torch.float64, None, 1e-6),    # the port's EPS (eqs. 25-26) moves it by about EPS / Z
    (torch.float32, None, 1e-5),    # as benchmarked: float32 rounding through T glimpses
])
def test_naive_port_gives_draw_models_loss_and_gradients(bench_script, monkeypatch, dtype,
                                                         eps, tol):
    """Both models' bound and gradients of every parameter, the port's mapped back to
    DrawModel's layout; eps None keeps the port's EPS."""
    naive = bench_script("naive")
    if eps is not None:
        monkeypatch.setattr(naive, "EPS", eps)
    model, port = models(naive, dtype)
    x, u = batch(dtype)
    loss = draw_loss(model, x, u)
    port_loss = port(x, u)
    assert relative_difference(port_loss, loss) < tol
    grads = dict(zip((n for n, _ in model.named_parameters()),
                     torch.autograd.grad(loss, list(model.parameters()))))
    port_grads = dict(zip((n for n, _ in port.named_parameters()),
                          torch.autograd.grad(port_loss, list(port.parameters()))))
    # the port's gradients in DrawModel's layout: load_draw_state's mapping, run backwards
    rows = [naive.PAPER_ORDER.index(name) for name in naive.DRAW_ORDER]
    renamed = {"encoder": "encoder", "decoder": "decoder", "mu": "sampler.mean_transform",
               "log_sigma": "sampler.log_sigma_transform", "read_attention": "reader.readout",
               "write_attention": "writer.z_trafo", "write_patch": "writer.w_trafo"}
    assert len(port_grads) == len(grads)
    for name, g in port_grads.items():
        if "." in name:
            module, param = name.split(".")
            if module.endswith("_attention"):
                g = g[rows]
            reference = grads[f"{renamed[module]}.{param}"]
        else:                                   # c_0, h_0_enc, h_0_dec: the same names
            reference = grads[name]
        assert relative_difference(g, reference) < tol, name


def test_a_zero_start_is_ported_as_zeros_that_do_not_train(bench_script):
    """DrawModel's learned_initial_state=False: the port's c_0, h_0^enc, h_0^dec are zero
    buffers, not parameters, and the two give the same bound."""
    naive = bench_script("naive")
    cfg = dataclasses.replace(CFG, learned_initial_state=False)
    torch.manual_seed(0)
    model = DrawModel.from_config(cfg).double()
    port = naive.NaiveDraw.from_config(cfg).double()
    naive.load_draw_state(port, model.state_dict())
    assert {"c_0", "h_0_enc", "h_0_dec"} <= set(dict(port.named_buffers()))
    assert not {"c_0", "h_0_enc", "h_0_dec"} & set(dict(port.named_parameters()))
    x, u = batch(torch.float64)
    assert relative_difference(port(x, u), draw_loss(model, x, u)) < 1e-12


def test_the_agreement_needs_the_attention_columns_mapped(bench_script):
    """The test above can fail: the attention heads copied in DrawModel's column order (not
    eq. 21's) give another bound."""
    naive = bench_script("naive")
    model, port = models(naive, torch.float64)
    x, u = batch(torch.float64)
    with torch.no_grad():
        port.read_attention.load_state_dict(model.reader.readout.state_dict())
        port.write_attention.load_state_dict(model.writer.z_trafo.state_dict())
        assert relative_difference(port(x, u), draw_loss(model, x, u)) > 1e-3


def test_naive_port_trains(bench_script):
    """One step of its training step changes every parameter and keeps the bound finite."""
    naive = bench_script("naive")
    _, port = models(naive, torch.float32)
    x, _ = batch(torch.float32)
    before = [p.detach().clone() for p in port.parameters()]
    naive.training_step(port, x)()
    assert all(not torch.equal(a, p) for a, p in zip(before, port.parameters()))
    assert torch.isfinite(port(x))


def test_naive_port_rejects_what_it_does_not_port(bench_script):
    naive = bench_script("naive")
    with pytest.raises(ValueError, match="one channel"):
        naive.NaiveDraw.from_config(DrawConfig(channels=3, read_N=2, write_N=5))
    with pytest.raises(ValueError, match="one channel"):
        naive.NaiveDraw.from_config(DrawConfig(read_N=None, write_N=5))
    with pytest.raises(ValueError, match="at least 2"):
        naive.NaiveDraw.from_config(DrawConfig(read_N=1, write_N=5))
