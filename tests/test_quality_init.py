"""The initialisation that lets attention models learn fast (issue 8; see DrawModel._init_weights),
and the benchmark that measured it (bench/quality.py).

Before training, h_0^dec = 0 and the heads' weights are small, so a window is its head's bias:
these tests check that window's exact geometry and what it reads and writes.
"""
import math

import pytest
import torch

from draw.bricks import spanning_window_bias
from draw.model import DrawConfig, DrawModel, nll_bound


def initial_window(head: torch.nn.Linear, zoomer):
    """(center_y, center_x, delta, sigma, gamma) of a head at h_dec = 0, as floats."""
    with torch.no_grad():
        att = zoomer.nn2att(head(torch.zeros(1, head.in_features)))
    return tuple(a.item() for a in att)


def model(**kw) -> DrawModel:
    torch.manual_seed(0)
    return DrawModel.from_config(DrawConfig(n_iter=2, enc_dim=16, dec_dim=12, z_dim=10, **kw))


def test_first_write_window_tiles_the_image_with_unit_gain():
    writer = model(read_N=2, write_N=5).writer
    cy, cx, delta, sigma, gamma = initial_window(writer.z_trafo, writer.zoomer)
    assert cy == pytest.approx(13.5) and cx == pytest.approx(13.5)      # the image centre
    assert delta == pytest.approx(28 / 5)                               # N * delta = 28
    assert sigma == pytest.approx(28 / 10)                              # delta / 2
    assert gamma == pytest.approx((5 / 28) ** 2)                        # 1 / delta^2
    # a patch of ones through eq. 29 adds exactly 1 per pixel on average, and the cover is
    # even: a few per cent from 1 inside, down to 0.69^2 in the corners
    with torch.no_grad():
        update = writer(torch.zeros(1, 12))                             # w = bias = 0
        image = writer.zoomer.write(torch.ones(1, 25), *(torch.tensor([v]) for v in
                                    (cy, cx, delta, sigma))).view(28, 28) / gamma
    assert torch.equal(update, torch.zeros(1, 784))
    assert image.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert image[2:-2, 2:-2].min() > 0.97 and image[2:-2, 2:-2].max() < 1.2
    assert image.min() > 0.45


def test_classic_zero_bias_would_write_dots():
    """The reason for the change: the classic window at zero bias writes 25 isolated dots."""
    writer = model(read_N=2, write_N=5).writer
    att = writer.zoomer.nn2att(torch.zeros(1, 5))
    image = writer.zoomer.write(torch.ones(1, 25), *att[:4]).view(28, 28) / att[4]
    assert image.mean().item() == pytest.approx(25 / 784, rel=1e-4)     # 1/31 of the gain
    assert (image < 0.01).float().mean() > 0.5                          # mostly untouched


def test_first_read_window_sees_every_quadrant():
    reader = model(read_N=2, write_N=5).reader
    cy, cx, delta, sigma, gamma = initial_window(reader.readout, reader.zoomer)
    assert (cy, cx) == pytest.approx((13.5, 13.5))
    assert delta == pytest.approx(14.0) and sigma == pytest.approx(3.5)    # delta / 4
    assert gamma == pytest.approx(1.0)
    # blank border as in MNIST; ink centred vertically, reaching further to the left
    x = torch.zeros(1, 28, 28)
    x[:, 6:22, 3:22] = 1.0
    x = x.view(1, 784)
    x_hat = x - 0.5                                                     # x - sigma(c_0)
    r = reader(x, x_hat, torch.zeros(1, 12))                           # (1, 8)
    glimpse_x = r[0, :4]     # each filter's weighted mean of x, filters (y, x) in row-major order
    assert (glimpse_x > 0.3).all()                                      # every filter sees ink
    torch.testing.assert_close(glimpse_x[0], glimpse_x[2])              # top and bottom alike
    torch.testing.assert_close(glimpse_x[1], glimpse_x[3])
    assert glimpse_x[0] > glimpse_x[1] + 0.1                            # more ink on the left
    # the classic zero bias puts the four filters on the corner pixels, which are blank
    att = reader.zoomer.nn2att(torch.zeros(1, 5))
    classic = att[4][:, None] * reader.zoomer.read(x, *att[:4])
    assert classic.abs().max() < 1e-6


def test_read_of_a_uniform_image_is_its_value():
    """gamma = 1: each glimpse value is a weighted mean, so a uniform image reads back as is."""
    for N in (1, 2, 3, 4):
        reader = model(read_N=N, write_N=5).reader
        r = reader(torch.full((1, 784), 0.3), torch.full((1, 784), -0.5), torch.zeros(1, 12))
        torch.testing.assert_close(r[0], torch.tensor([0.3] * N * N + [-0.5] * N * N))


def test_non_square_multichannel_window_spans_the_longer_side():
    m = model(channels=3, height=20, width=32, read_N=3, write_N=4)
    cy, cx, delta, sigma, gamma = initial_window(m.writer.z_trafo, m.writer.zoomer)
    assert (cy, cx) == pytest.approx((9.5, 15.5))
    assert delta == pytest.approx(8.0) and sigma == pytest.approx(4.0)
    assert gamma == pytest.approx(1 / 64)
    first_x = cx + (1 - 4 / 2 - 0.5) * delta                           # grid point i = 1
    assert first_x == pytest.approx(3.5)
    cy, cx, delta, sigma, gamma = initial_window(m.reader.readout, m.reader.zoomer)
    assert (cy, cx) == pytest.approx((9.5, 15.5))
    assert delta == pytest.approx(32 / 3) and sigma == pytest.approx(8 / 3)
    assert gamma == pytest.approx(1.0)


def test_single_filter_window_covers_the_image():
    m = model(read_N=1, write_N=1)
    cy, cx, delta, sigma, gamma = initial_window(m.writer.z_trafo, m.writer.zoomer)
    assert (cy, cx, sigma) == pytest.approx((13.5, 13.5, 14.0))
    assert gamma == pytest.approx(1 / 28 ** 2)


def test_spanning_window_bias_values():
    zoomer = model(read_N=2, write_N=5).writer.zoomer
    bias = spanning_window_bias(zoomer, 1 / 2, -2.0)
    expected = [0.0, 0.0, math.log(5.6 / 6.75), 2 * math.log(2.8), -2 * math.log(5.6)]
    torch.testing.assert_close(bias, torch.tensor(expected))
    bias = spanning_window_bias(zoomer, 1 / 4, 0.0)
    expected = [0.0, 0.0, math.log(5.6 / 6.75), 2 * math.log(1.4), 0.0]
    torch.testing.assert_close(bias, torch.tensor(expected))


def test_lstm_forget_gates_start_open_and_the_rest_is_classic():
    m = model(read_N=2, write_N=5)
    for cell in (m.encoder, m.decoder):
        H = cell.hidden_size
        expected = torch.zeros(4 * H)
        expected[H:2 * H] = 1.0                                         # (i, f, g, o)
        assert torch.equal(cell.bias_ih.detach(), expected)
        assert torch.equal(cell.bias_hh.detach(), torch.zeros(4 * H))
    heads = {"reader.readout.bias", "writer.z_trafo.bias", "encoder.bias_ih", "decoder.bias_ih"}
    for name, p in m.named_parameters():
        if name.split(".")[-1].startswith("bias") and name not in heads:
            assert torch.equal(p.detach(), torch.zeros_like(p)), name


def test_weights_are_the_classic_gaussian():
    torch.manual_seed(0)
    m = DrawModel.from_config(DrawConfig(n_iter=2, read_N=2, write_N=5))
    w = m.encoder.weight_hh.detach()                                    # 1024 x 256
    assert w.mean().abs() < 1e-4 and w.std().item() == pytest.approx(0.01, rel=0.01)


def test_reinitialising_gives_the_same_biases():
    m = model(read_N=2, write_N=5)
    before = {n: p.detach().clone() for n, p in m.named_parameters() if "bias" in n}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    m.apply(m._init_weights)
    for n, p in m.named_parameters():
        if "bias" in n:
            assert torch.equal(p.detach(), before[n]), n


# bench/quality.py, the benchmark these choices were measured with

class TrainValidOnly:
    """A dataset whose test split cannot be read: the benchmark must never evaluate on it."""

    def __init__(self, train: torch.Tensor, valid: torch.Tensor):
        self.train, self.valid = train, valid

    @property
    def test(self):
        raise AssertionError("the benchmark read the test split")


def tiny_data(seed: int = 0) -> TrainValidOnly:
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(80, 64, generator=g) < 0.3).to(torch.uint8) * 255   # binary 8x8
    return TrainValidOnly(images[:60], images[60:])


TINY = DrawConfig(height=8, width=8, n_iter=2, enc_dim=8, dec_dim=8, z_dim=4, read_N=2, write_N=3)


def test_bench_trains_for_exactly_the_steps_across_epochs(capsys, bench_script):
    bench = bench_script("quality")
    result = bench.train_and_validate(TINY, tiny_data(), steps=7, batch_size=10, lr=1e-3, seed=0,
                                      device=torch.device("cpu"), label="attention")
    out = capsys.readouterr().out
    assert "attention epoch 1: step 6," in out and "attention epoch 2: step 7," in out
    assert result["steps"] == 7 and result["config"] == TINY.to_dict()
    assert math.isfinite(result["valid_nll_bound"]) and result["valid_kl"] >= 0
    again = bench.train_and_validate(TINY, tiny_data(), steps=7, batch_size=10, lr=1e-3,
                                     seed=0, device=torch.device("cpu"), label="attention")
    assert again["valid_nll_bound"] == result["valid_nll_bound"]     # same seed, same numbers


def test_bench_valid_bound_is_the_mean_bound_of_eq_12(bench_script):
    bench = bench_script("quality")
    torch.manual_seed(3)
    m = DrawModel.from_config(TINY)
    images = tiny_data().valid                                          # (20, 64) uint8
    bound, kl = bench.valid_bound(m, images, torch.device("cpu"), seed=5)
    x = images.float() / 255
    torch.manual_seed(5)                                                # the same noise u
    with torch.no_grad():
        c, kl_t = m(x)
    assert bound == pytest.approx(nll_bound(x, c, kl_t).mean().item(), rel=1e-6)
    assert kl == pytest.approx(kl_t.sum(dim=0).mean().item(), rel=1e-6)
    assert m.training                                                  # left in training mode
