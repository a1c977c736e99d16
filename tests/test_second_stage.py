"""bench/second_stage.py: the mixture prior's density against torch.distributions, its draws'
moments, a fit that must find a known conditional dependence, the posterior paths against the
model's own unroll, the paths with kept coordinates at both extremes, and a whole run on the
shipped sample data."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from draw.checkpoint import save_checkpoint
from draw.datasets import batches, get_data
from draw.errors import DrawError
from draw.model import DrawConfig, DrawModel

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture
def stage(bench_script):
    return bench_script("second_stage")


def small_model() -> DrawModel:
    torch.manual_seed(0)
    return DrawModel.from_config(DrawConfig(n_iter=5, enc_dim=12, dec_dim=10, z_dim=3,
                                            read_N=2, write_N=3)).eval()


def fixed_mixture(stage, mean: float, log_scale: float, z_dim: int = 3, input_dim: int = 10):
    """A one-component prior whose output ignores its input: N(mean, exp(log_scale)^2 I)."""
    prior = stage.MixturePrior(input_dim, z_dim, hidden=8, components=1)
    last = prior.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0] + [mean] * z_dim + [log_scale] * z_dim))
    return prior


def test_the_mixtures_density_is_torchs(stage):
    torch.manual_seed(1)
    prior = stage.MixturePrior(6, 4, hidden=16, components=3)
    h, z = torch.randn(50, 6), torch.randn(50, 4) * 2
    log_weight, mean, log_scale = prior.mixture(h)
    assert log_weight.shape == (50, 3) and mean.shape == log_scale.shape == (50, 3, 4)
    reference = MixtureSameFamily(Categorical(logits=log_weight),
                                  Independent(Normal(mean, log_scale.exp()), 1))
    torch.testing.assert_close(prior.log_prob(h, z), reference.log_prob(z))


def test_a_masked_mixture_models_its_coordinates_and_n01_the_rest(stage):
    torch.manual_seed(2)
    prior = stage.MixturePrior(6, 4, hidden=16, components=3)
    h, z = torch.randn(50, 6), torch.randn(50, 4) * 2
    mask = torch.tensor([True, False, True, False]).expand(50, -1)
    log_weight, mean, log_scale = prior.mixture(h)
    modelled = MixtureSameFamily(Categorical(logits=log_weight),
                                 Independent(Normal(mean[..., ::2], log_scale[..., ::2].exp()), 1))
    rest = Normal(0.0, 1.0).log_prob(z[:, 1::2]).sum(dim=1)
    torch.testing.assert_close(prior.log_prob(h, z, mask), modelled.log_prob(z[:, ::2]) + rest)
    # its draws: the marked coordinates from the mixture, the others N(0, 1)
    fixed = fixed_mixture(stage, mean=0.7, log_scale=-6.0)
    drawn = fixed.sample(torch.randn(20000, 10), torch.Generator().manual_seed(0),
                         torch.tensor([True, False, True]).expand(20000, -1))
    torch.testing.assert_close(drawn[:, ::2], torch.full((20000, 2), 0.7), atol=0.02, rtol=0)
    assert drawn[:, 1].mean().item() == pytest.approx(0.0, abs=0.02)
    assert drawn[:, 1].std().item() == pytest.approx(1.0, abs=0.02)


def test_step_masks_follow_the_flattened_pairs(stage):
    keep = torch.tensor([[True, False], [False, True], [True, True]])          # (T=3, Z=2)
    masks = stage.step_masks(keep, 4)                                           # 4 images
    assert masks.shape == (12, 2)
    for row in range(12):
        assert torch.equal(masks[row], keep[row // 4])
    assert stage.step_masks(None, 4) is None


def test_the_mixtures_draws_have_its_moments(stage):
    prior = fixed_mixture(stage, mean=2.0, log_scale=math.log(0.5))
    z = prior.sample(torch.randn(20000, 10), torch.Generator().manual_seed(0))
    assert z.shape == (20000, 3)
    torch.testing.assert_close(z.mean(dim=0), torch.full((3,), 2.0), atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(dim=0), torch.full((3,), 0.5), atol=0.02, rtol=0)


def test_the_mixtures_draws_pick_components_by_their_weights(stage):
    # two components: weight 1/4 at -3 with scale 0.5, weight 3/4 at +3 with scale 1
    prior = stage.MixturePrior(10, 1, hidden=8, components=2)
    last = prior.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        # the logits, then each component's mean and log scale
        last.bias.copy_(torch.tensor([math.log(0.25), math.log(0.75), -3.0, math.log(0.5),
                                      3.0, 0.0]))
    z = prior.sample(torch.randn(40000, 10), torch.Generator().manual_seed(0))[:, 0]
    assert (z > 0).float().mean().item() == pytest.approx(0.75, abs=0.01)
    # each side mostly one component's (the other's share there is 1e-3 or less)
    assert z[z < -1].mean().item() == pytest.approx(-3.0, abs=0.02)
    assert z[z < -1].std().item() == pytest.approx(0.5, abs=0.02)
    assert z[z > 0].mean().item() == pytest.approx(3.0, abs=0.03)
    assert z[z > 0].std().item() == pytest.approx(1.0, abs=0.03)


def test_the_fit_finds_a_conditional_dependence_that_no_gaussian_has(stage):
    # z's first coordinate is +-2 by the sign of h's first, plus N(0, 0.3^2): a bimodal
    # aggregate whose conditional is sharp. Against N(0, 1) the conditional gains
    # E[-log N(z; 0, 1)] - H(N(0, 0.3^2)) = (log 2 pi + 4.09) / 2 - log(2 pi e 0.09) / 2 = 2.75
    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, 6000, 4, generator=g)
    z = torch.randn(1, 6000, 2, generator=g)
    z[..., 0] = 2 * torch.sign(h[..., 0]) + 0.3 * z[..., 0]
    torch.manual_seed(0)
    prior = stage.MixturePrior(4, 2, hidden=32, components=2)
    curve = stage.fit(prior, (h[:, :5000], z[:, :5000]), (h[:, 5000:], z[:, 5000:]),
                      epochs=15, lr=3e-3, batch=100, generator=g)
    normal = stage.standard_normal_log_prob(z[:, 5000:]).sum(dim=0).mean().item()
    assert max(curve) - normal == pytest.approx(2.75, abs=0.15)
    # the parameters kept are the best pass's
    assert stage.path_log_prob(prior, h[:, 5000:], z[:, 5000:]) == pytest.approx(max(curve))
    # the same with the mixture on the first coordinate only: the second, N(0, 1) in the data,
    # is N(0, 1)'s in the prior too, so the gain is the same
    torch.manual_seed(0)
    masked = stage.MixturePrior(4, 2, hidden=32, components=2)
    keep = torch.tensor([[True, False]])
    curve = stage.fit(masked, (h[:, :5000], z[:, :5000]), (h[:, 5000:], z[:, 5000:]),
                      epochs=15, lr=3e-3, batch=100, generator=g, keep=keep)
    assert max(curve) - normal == pytest.approx(2.75, abs=0.15)


def test_the_posterior_pairs_are_the_models_own_path(stage):
    model = small_model()
    images = get_data("sample").train[:7]
    states, draws, variance = stage.posterior_pairs(model, images, torch.Generator()
                                                    .manual_seed(3), batch=4)
    assert states.shape == (5, 7, 10) and draws.shape == (5, 7, 3) and variance.shape == (15,)
    x = next(batches(images, 7))
    generator = torch.Generator().manual_seed(3)       # the noise as posterior_pairs draws it
    u = torch.cat([model.noise(len(part), part, generator) for part in x.split(4)], dim=1)
    with torch.no_grad():
        _, z, mean, _ = model.unroll(x, u)
    torch.testing.assert_close(draws, z)
    torch.testing.assert_close(variance, mean.permute(1, 0, 2).reshape(7, 15).double()
                               .var(dim=0))
    # h_0^dec before z_1; h_1^dec, the decoder's state after z_1, before z_2
    torch.testing.assert_close(states[0], model.h_0_dec.expand(7, -1))
    h_1, _ = model.decoder(z[0], (states[0], torch.zeros(7, 10)))
    torch.testing.assert_close(states[1], h_1)


def test_the_prior_sees_the_state_its_cell_or_the_pooled_canvas(stage):
    model = small_model()
    state = model.initial_state(2, next(model.parameters()))
    state = state._replace(c=torch.randn(2, 28 * 28), cell_dec=torch.randn(2, 10))
    assert stage.prior_input(state, "state", (1, 28, 28)) is state.h_dec
    torch.testing.assert_close(stage.prior_input(state, "cell", (1, 28, 28)),
                               torch.cat([state.h_dec, state.cell_dec], dim=1))
    seen = stage.prior_input(state, "canvas", (1, 28, 28))
    assert seen.shape == (2, stage.condition_size(model.config, "canvas")) == (2, 10 + 81)
    # the pooled canvas's first and last cells: the means of sigma(c)'s first and last 3x3
    # blocks of the 27x27 that pooling covers
    canvas = torch.sigmoid(state.c).view(2, 28, 28)
    torch.testing.assert_close(seen[:, 10], canvas[:, :3, :3].mean(dim=(1, 2)))
    torch.testing.assert_close(seen[:, -1], canvas[:, 24:27, 24:27].mean(dim=(1, 2)))


def test_kept_paths_are_the_reconstructions_or_the_samples_at_the_extremes(stage):
    model = small_model()
    sampler = model.sampler
    x = next(batches(get_data("sample").train[:6], 6))
    u = model.noise(6, x, torch.Generator().manual_seed(0))
    everything, nothing = torch.ones(5, 3, dtype=torch.bool), torch.zeros(5, 3, dtype=torch.bool)
    with torch.no_grad():
        c, *_ = model.unroll(x, u)
    torch.testing.assert_close(stage.kept_paths(model, x, everything, u), torch.sigmoid(c))
    torch.testing.assert_close(stage.kept_paths(model, x, nothing, u), model.sample(6, u)[-1])
    assert model.sampler is sampler
    # one coordinate of one step from Q: z_3's, where the posterior's mean is not 0
    one = nothing.clone()
    one[2, 1] = True
    assert not torch.equal(stage.kept_paths(model, x, one, u), model.sample(6, u)[-1])
    # z_1, z_2 from Q, the rest u itself: by hand, step by step
    first = nothing.clone()
    first[:2] = True
    with torch.no_grad():
        state = model.initial_state(6, x)
        for t in range(5):
            if t < 2:
                state, *_ = model.step(state, x, u[t])
            else:
                state = model.decode(state, u[t])
    torch.testing.assert_close(stage.kept_paths(model, x, first, u), torch.sigmoid(state.c))


class Recording:
    """A prior that draws z_t = 0 and keeps what it was shown."""

    def __init__(self):
        self.seen = []

    def sample(self, h: torch.Tensor, generator: torch.Generator,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        self.seen.append(h.clone())
        return torch.zeros(len(h), 3)


def test_prior_samples_show_the_prior_the_state_before_each_draw(stage):
    model = small_model()
    with torch.no_grad():
        model.h_0_dec.normal_()                    # so that h_0^dec is not the zero of a bug
    prior = Recording()
    stage.prior_samples(model, prior, 4, torch.Generator().manual_seed(0))
    state = model.initial_state(4, next(model.parameters()))
    for seen in prior.seen:
        torch.testing.assert_close(seen, state.h_dec)
        state = model.decode(state, torch.zeros(4, 3))
    assert len(prior.seen) == 5


@pytest.mark.parametrize("condition", ["state", "cell", "canvas"])
def test_prior_samples_decode_the_priors_draws(stage, condition):
    model = small_model()
    prior = fixed_mixture(stage, mean=0.7, log_scale=-6.0,                # z_t = 0.7 +- 0.0025
                          input_dim=stage.condition_size(model.config, condition))
    canvases = stage.prior_samples(model, prior, 4, torch.Generator().manual_seed(0), condition)
    torch.testing.assert_close(canvases, model.sample(4, torch.full((5, 4, 3), 0.7))[-1],
                               atol=1e-3, rtol=0)


def test_a_whole_run_on_the_sample_data(stage, tmp_path, capsys):
    path = tmp_path / "m_model.pkl"
    save_checkpoint(path, small_model(), run={"dataset": "sample"})
    result = stage.main(str(path), n=200, held_out=50, hidden=16, components=2, epochs=2)
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("posterior paths of 200 training and 50 valid images, one draw each")
    assert [line.split(":")[0] for line in out[1:3]] == ["prior pass 1", "prior pass 2"]
    assert out[3] == (f"held-out log p(z_1..z_T): N(0, I) {result['normal']:.2f}, the fitted "
                      f"prior {max(result['curve']):.2f} nats (pass "
                      f"{result['curve'].index(max(result['curve'])) + 1})")
    # the sample data's 50 valid images, 15 coordinates each: N(0, 1)'s log density of z
    # drawn from near N(0, 1) is near -15 (log 2 pi + 1) / 2
    assert result["normal"] == pytest.approx(-15 * (math.log(2 * math.pi) + 1) / 2, rel=0.1)
    with pytest.raises(DrawError, match="not two-digit MNIST's 1x60x60"):
        stage.main(str(path), n=200, read=True)
    with pytest.raises(ValueError, match="condition must be one of"):
        stage.condition_size(small_model().config, "canvass")
    # a prior that sees the canvas too: fitted and scored on the same paths' draws
    canvas = stage.main(str(path), n=200, held_out=50, hidden=16, components=2, epochs=1,
                        condition="canvas")
    assert canvas["normal"] == result["normal"]
    # the untrained model's posterior means barely vary: no coordinate is active, and a mixture
    # of none of them is N(0, I) itself
    active = stage.main(str(path), n=200, held_out=50, hidden=16, components=2, epochs=1,
                        active_only=True)
    assert active["fitted"] == pytest.approx(result["normal"], abs=1e-4)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST not found at {SHARED_MNIST}")
def test_every_reading_runs_on_a_two_digit_model(stage, tmp_path, capsys, monkeypatch):
    root = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "draw.datasets", "convert", "mnist", "--from",
                    str(SHARED_MNIST), "--root", str(root)], check=True, capture_output=True)
    monkeypatch.setattr(stage.reader_script, "READER_CANVASES", 1000)      # a brief reader
    monkeypatch.setattr(stage.reader_script, "READER_EPOCHS", 1)
    torch.manual_seed(0)
    model = DrawModel.from_config(DrawConfig(height=60, width=60, n_iter=2, enc_dim=8,
                                             dec_dim=8, z_dim=2, read_N=2, write_N=5)).eval()
    g = torch.Generator().manual_seed(0)
    held_draws = torch.randn(2, 40, 2, generator=g)
    valid_x = torch.rand(40, 3600, generator=g)
    active = torch.tensor([0, 3])                                # z_1's first, z_2's second
    mnist = stage.reader_script.labelled_mnist(str(root))
    rows = ["valid images", "posterior draws (reconstructions)",
            "the same, only 2 active coordinates kept",
            "paths with those coordinates from Q, the encoder reacting", "N(0, I)",
            "N(0, I) on the active coordinates, 0 on the rest", "the fitted prior"]
    for modelled in (None, torch.tensor([[True, False], [False, True]])):
        prior = stage.MixturePrior(8, 2, hidden=8, components=2)
        shares = stage.read_all(model, prior, held_draws, active, valid_x, 40, g, 0, mnist,
                                "state", modelled)
        # T = 2 is below every handover: those rows are left out
        assert list(shares) == rows
        assert all(0 <= share <= 1 for share in shares.values())
        printed = capsys.readouterr().out.splitlines()[-len(rows):]
        assert [line.split(":")[0] for line in printed] == rows
