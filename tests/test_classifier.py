"""The read-only attention classifier (section 4.1): shapes, gradients, parameter count, a float64
reference of one forward pass written from the paper's equations, and that it learns."""
import math

import pytest
import torch

from draw.classifier import (AttentionClassifier, ClassifierConfig, GlimpseReader,
                             classification_loss, errors)
from draw.bricks import AttentionReader
from draw.model import ConfigError, DrawConfig

TINY = ClassifierConfig(channels=1, height=9, width=11, n_iter=3, enc_dim=7, read_N=3,
                        n_classes=4)
COLOUR = ClassifierConfig(channels=3, height=8, width=8, n_iter=2, enc_dim=5, read_N=2,
                          n_classes=3)


def make(cfg, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return AttentionClassifier.from_config(cfg).to(dtype)


def images(cfg, B=5, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, cfg.x_dim, generator=g, dtype=dtype)


@pytest.mark.parametrize("cfg", [TINY, COLOUR])
def test_shapes_and_windows(cfg):
    model = make(cfg)
    x = images(cfg)
    logits = model(x)
    assert logits.shape == (5, cfg.n_classes) and torch.isfinite(logits).all()
    logits2, att = model(x, return_attention=True)
    assert torch.equal(logits, logits2)
    assert set(att) == {"center_y", "center_x", "delta", "sigma", "gamma"}
    assert all(v.shape == (cfg.n_iter, 5) for v in att.values())
    assert isinstance(model.reader, AttentionReader) and model.reader.read_dim == (
        cfg.channels * cfg.read_N ** 2)


def test_first_window_is_the_spanning_overview():
    """h_0 = 0, so glimpse 1 reads through the bias: centred, grid tiling the image, sigma =
    delta / 2, gamma = delta, for every example alike."""
    cfg = ClassifierConfig(height=100, width=100, n_iter=2, enc_dim=16, read_N=12)
    model = make(cfg)
    _, att = model(images(cfg, B=3), return_attention=True)
    first = {k: v[0] for k, v in att.items()}
    assert torch.allclose(first["center_y"], torch.full((3,), 49.5, dtype=torch.float64))
    assert torch.allclose(first["center_x"], torch.full((3,), 49.5, dtype=torch.float64))
    assert torch.allclose(first["delta"], torch.full((3,), 100 / 12, dtype=torch.float64))
    assert torch.allclose(first["sigma"], first["delta"] / 2)
    assert torch.allclose(first["gamma"], first["delta"])
    # the later windows depend on what was seen
    assert not torch.allclose(att["center_x"][1], att["center_x"][1][:1].expand(3))


def test_parameter_count_paper_size():
    """Table 3's classifier: LSTM 256 fed 12 x 12 glimpses, 10 classes, on 100 x 100 images.
    LSTMCell: 4*256*(144 + 256) weights + 2*4*256 biases = 411,648; read head 256*5 + 5 = 1,285;
    softmax layer 256*10 + 10 = 2,570; 415,503 in all."""
    model = AttentionClassifier.from_config(ClassifierConfig())
    assert sum(p.numel() for p in model.parameters()) == 415_503


def test_every_parameter_gets_a_gradient():
    model = make(TINY)
    x = images(TINY)
    y = torch.tensor([0, 1, 2, 3, 0])
    classification_loss(model(x), y).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_batched_equals_per_example():
    model = make(COLOUR)
    x = images(COLOUR, B=4)
    together = model(x)
    alone = torch.cat([model(x[k:k + 1]) for k in range(4)])
    assert torch.allclose(together, alone, atol=1e-12)


def _reference_logits(model: AttentionClassifier, x: torch.Tensor) -> torch.Tensor:
    """One forward pass written from the paper with Python loops over filters and pixels, from
    the parameters alone: eqs. 21-27 for the window and the read, the LSTM cell by hand."""
    cfg = model.config
    C, H, W, N, K = cfg.channels, cfg.height, cfg.width, cfg.read_N, cfg.enc_dim
    W_att, b_att = model.reader.readout.weight, model.reader.readout.bias
    W_ih, W_hh = model.lstm.weight_ih, model.lstm.weight_hh
    b = model.lstm.bias_ih + model.lstm.bias_hh
    out = []
    for x_n in x:
        img = x_n.view(C, H, W)
        h = torch.zeros(K, dtype=x.dtype)
        c = torch.zeros(K, dtype=x.dtype)
        for _ in range(cfg.n_iter):
            gy_, gx_, log_d, log_s2, log_g = (W_att @ h + b_att).tolist()        # eq. 21
            # eqs. 22-24 in the paper's 1-based pixel coordinates
            gX, gY = (W + 1) / 2 * (gx_ + 1), (H + 1) / 2 * (gy_ + 1)
            delta = (max(H, W) - 1) / (N - 1) * math.exp(log_d)
            var, gamma = math.exp(log_s2), math.exp(log_g)

            def bank(g, size):                                      # eqs. 19-20, 25-26
                F = torch.zeros(N, size, dtype=x.dtype)
                for i in range(1, N + 1):
                    mu = g + (i - N / 2 - 0.5) * delta
                    for a in range(1, size + 1):
                        F[i - 1, a - 1] = math.exp(-(a - mu) ** 2 / (2 * var))
                    F[i - 1] /= F[i - 1].sum()
                return F

            FY, FX = bank(gY, H), bank(gX, W)
            r = torch.cat([(gamma * FY @ img[ch] @ FX.T).flatten() for ch in range(C)])  # eq. 27
            gates = W_ih @ r + W_hh @ h + b
            i_g, f_g, g_g, o_g = gates.split(K)
            c = torch.sigmoid(f_g) * c + torch.sigmoid(i_g) * torch.tanh(g_g)
            h = torch.sigmoid(o_g) * torch.tanh(c)
        out.append(model.classifier.weight @ h + model.classifier.bias)
    return torch.stack(out)


@pytest.mark.parametrize("cfg", [TINY, COLOUR])
def test_forward_matches_float64_reference(cfg):
    model = make(cfg, seed=3)
    with torch.no_grad():
        # move the windows away from their initial bias so that every term of eq. 21 matters
        model.reader.readout.weight.normal_(0, 0.5)
        model.reader.readout.bias.add_(torch.tensor([0.2, -0.3, -0.4, 0.3, 0.1],
                                                    dtype=torch.float64))
        x = images(cfg, B=3, seed=4)
        assert torch.allclose(model(x), _reference_logits(model, x), rtol=1e-10, atol=1e-12)


def test_loss_and_errors():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    p = torch.softmax(logits, dim=1)
    assert torch.allclose(classification_loss(logits, y), -torch.log(p[[0, 1], y]))
    assert errors(logits, y).tolist() == [0.0, 1.0]


def _squares(n: int, g: torch.Generator, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright 4 x 4 square in one of the 3 x 3 cells of a noisy image; the label is the cell."""
    y = torch.randint(0, 9, (n,), generator=g)
    x = 0.3 * torch.rand(n, size, size, generator=g)
    jitter = torch.randint(0, 4, (n, 2), generator=g)
    for k in range(n):
        top, left = 8 * (y[k] // 3) + jitter[k, 0], 8 * (y[k] % 3) + jitter[k, 1]
        x[k, top:top + 4, left:left + 4] = 1.0
    return x.view(n, -1), y


def test_learns_where_the_square_is():
    """60 Adam steps take the test error of a 9-way task (chance: 89%) below 15%."""
    torch.manual_seed(0)
    cfg = ClassifierConfig(height=24, width=24, n_iter=2, enc_dim=32, read_N=4, n_classes=9)
    model = AttentionClassifier.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        x, y = _squares(32, g)
        optimizer.zero_grad()
        classification_loss(model(x), y).mean().backward()
        optimizer.step()
    x, y = _squares(500, g)
    with torch.no_grad():
        assert errors(model(x), y).mean() < 0.15


def test_config_checks_and_round_trip():
    assert ClassifierConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ConfigError, match="read_N must fit in the 10x10 image, got 12"):
        ClassifierConfig(height=10, width=10, read_N=12)
    with pytest.raises(ConfigError, match="n_iter must be a positive integer, got 0"):
        ClassifierConfig(n_iter=0)
    with pytest.raises(ConfigError, match="n_classes must be at least 2, got 1"):
        ClassifierConfig(n_classes=1)
    with pytest.raises(ValueError, match="unknown"):
        ClassifierConfig.from_dict({**TINY.to_dict(), "z_dim": 3})
    # a DRAW model's config is not a classifier's, and the other way round
    assert TINY.to_dict()["model"] == "attention-classifier"
    with pytest.raises(ValueError, match="not an attention classifier"):
        ClassifierConfig.from_dict(DrawConfig().to_dict())
    with pytest.raises(ValueError, match="unknown DrawConfig fields"):
        DrawConfig.from_dict(TINY.to_dict())
    assert isinstance(AttentionClassifier.from_config(TINY).reader, GlimpseReader)
