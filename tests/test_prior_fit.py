"""bench/prior_fit.py: the posterior's path against the model's own KL, the aggregate Gaussian's
moments, its KL against torch.distributions, the held-out R^2 on known cases, and a whole run on
the shipped sample data."""
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from draw.checkpoint import save_checkpoint
from draw.datasets import batches, get_data
from draw.errors import DrawError
from draw.model import DrawConfig, DrawModel


@pytest.fixture
def fit(bench_script):
    return bench_script("prior_fit")


def small_model() -> DrawModel:
    torch.manual_seed(0)
    return DrawModel.from_config(DrawConfig(n_iter=5, enc_dim=12, dec_dim=10, z_dim=3,
                                            read_N=2, write_N=3))


def test_the_posterior_path_gives_the_models_own_kl_and_decoder_states(fit):
    model = small_model().eval()
    x = next(batches(get_data("sample").train[:7], 7))
    means, log_sigmas, states = fit.posterior_path(model, x, torch.Generator().manual_seed(3),
                                                   batch=4)
    assert means.shape == log_sigmas.shape == (5, 7, 3) and states.shape == (5, 7, 10)
    # the same noise, drawn batch by batch as posterior_path draws it
    generator = torch.Generator().manual_seed(3)
    u = torch.cat([model.noise(len(part), part, generator) for part in x.split(4)], dim=1)
    with torch.no_grad():
        _, kl = model(x, u)                                                  # (T, B)
    # the KL by hand, not by the sampler's own formula
    variances = torch.exp(2 * log_sigmas)
    ours = 0.5 * (variances + means ** 2 - 1 - variances.log()).sum(-1)
    torch.testing.assert_close(ours, kl.double(), rtol=1e-5, atol=1e-5)
    # h_0^dec, the learned initial state, comes before z_1, the same for every image
    torch.testing.assert_close(states[0], model.h_0_dec.expand(7, -1))


def test_the_aggregate_gaussian_has_the_mixtures_moments(fit):
    means = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]], [[2.0, 1.0], [2.0, 1.0]]],
                         dtype=torch.float64)                                # (T=2, N=2, Z=2)
    variances = torch.full_like(means, 0.5)
    mu, cov = fit.aggregate_gaussian(means, variances)
    torch.testing.assert_close(mu, torch.tensor([[0.0, 0.0], [2.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(cov, torch.tensor([[[1.5, 0.0], [0.0, 0.5]],
                                                  [[0.5, 0.0], [0.0, 0.5]]], dtype=torch.float64))
    # correlated means and unequal variances: the law of total covariance, image by image,
    # E_i[diag(v_i)] + E_i[(m_i - mu)(m_i - mu)^T], against the moments of a large draw
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 6, 4, generator=g, dtype=torch.float64) @ torch.randn(
        4, 4, generator=g, dtype=torch.float64)
    variances = torch.rand(3, 6, 4, generator=g, dtype=torch.float64) + 0.1
    mu, cov = fit.aggregate_gaussian(means, variances)
    for t in range(3):
        by_hand = sum(torch.diag(v) + torch.outer(m - mu[t], m - mu[t])
                      for m, v in zip(means[t], variances[t])) / 6
        torch.testing.assert_close(cov[t], by_hand)
        torch.testing.assert_close(mu[t], means[t].mean(0))
    pick = torch.randint(0, 6, (400_000,), generator=g)                      # the mixture
    draws = means[1, pick] + variances[1, pick].sqrt() * torch.randn(
        400_000, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.cov(draws.T), cov[1], atol=0.05, rtol=0.02)


def test_the_joint_gaussian_keeps_the_varying_dimensions_and_the_steps_dependence(fit):
    """z_1..z_3 of 3 dimensions. The first varies between images, and z_2's repeats z_1's; z_3's
    second is z_3's first plus noise; the third is the prior's own at every step. The active
    dimensions are the first of each step and z_3's second; only the joint fit sees that z_1
    and z_2 are one draw, and shuffling the steps apart takes that away and nothing else."""
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(4000, generator=g, dtype=torch.float64) for _ in range(3))
    means = torch.zeros(3, 4000, 3, dtype=torch.float64)
    means[0, :, 0], means[1, :, 0], means[2, :, 0], means[2, :, 1] = a, a, b, b + c
    variances = torch.full_like(means, 0.01)
    variances[:, :, 2] = 1.0
    active = fit.active_dimensions(means)
    assert active.tolist() == [0, 3, 6, 7]                                  # t * Z + z
    mu, cov, blocks = fit.joint_gaussian(means, variances, active)
    # the moments are aggregate_gaussian's over the flattened active dimensions
    _, whole = fit.aggregate_gaussian(fit.flatten(means)[None], fit.flatten(variances)[None])
    torch.testing.assert_close(cov, whole[0][active][:, active])
    torch.testing.assert_close(mu, fit.flatten(means)[:, active].mean(dim=0))
    assert cov[0, 1] == pytest.approx(1.0, abs=0.1) and abs(cov[0, 2]) < 0.1
    # the blocks keep the entries within a step (z_3's two) and zero those between steps
    expected = torch.diag(cov.diagonal())
    expected[2, 3] = expected[3, 2] = cov[2, 3]
    torch.testing.assert_close(blocks, expected)
    assert cov[2, 3] == pytest.approx(1.0, abs=0.1)
    # jointly, z_2 = z_1 (up to the posterior's variance 0.01) is worth about
    # 1/2 log(1 / (1 - rho^2)) = 1/2 log(1.01^2 / 0.0201) = 1.96 nats more than step by step
    joint, alone = fit.both_kls(mu, cov, blocks)
    assert joint - alone == pytest.approx(0.5 * math.log(1.01 ** 2 / 0.0201), abs=0.05)
    # shuffled apart: the same blocks, and the 1.96 nats gone, to what 4,000 images find by chance
    apart = fit.joint_gaussian(means, variances, active, torch.Generator().manual_seed(1))
    torch.testing.assert_close(apart[2], blocks)
    apart_joint, apart_alone = fit.both_kls(*apart)
    assert apart_alone == pytest.approx(alone, abs=1e-9)
    assert 0 <= apart_joint - apart_alone < 0.01


def test_the_kl_to_the_standard_normal_is_torchs(fit):
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=g, dtype=torch.float64)
    a = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2) + 0.1 * torch.eye(4, dtype=torch.float64)
    expected = kl_divergence(MultivariateNormal(mu, cov),
                             MultivariateNormal(torch.zeros(4, dtype=torch.float64),
                                                torch.eye(4, dtype=torch.float64)))
    torch.testing.assert_close(fit.kl_to_standard_normal(mu, cov), expected)
    assert fit.kl_to_standard_normal(mu[:1] * 0, torch.eye(4, dtype=torch.float64)[None]) == 0


def test_held_out_r2_is_one_for_an_affine_map_and_near_zero_for_noise(fit):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(4000, 20, generator=g, dtype=torch.float64)
    affine = features @ torch.randn(20, 3, generator=g, dtype=torch.float64) + 5.0
    assert fit.held_out_r2(features, affine, 3000) == pytest.approx(1.0, abs=1e-9)
    noisy = affine + torch.randn(4000, 3, generator=g, dtype=torch.float64) * affine.std()
    assert fit.held_out_r2(features, noisy, 3000) == pytest.approx(0.5, abs=0.05)
    noise = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert -0.03 < fit.held_out_r2(features, noise, 3000) < 0.01


def test_a_whole_run_on_the_sample_data(fit, tmp_path, capsys):
    path = tmp_path / "m_model.pkl"
    model = small_model()
    with torch.no_grad():
        # an untrained Q's means barely vary between images: made to, so that some are active
        model.encoder.weight_ih.mul_(100)
        model.sampler.mean_transform.weight.mul_(100)
    save_checkpoint(path, model, run={"dataset": "sample"})
    result = fit.main(str(path), n=300)
    out = capsys.readouterr().out
    assert "300 training images, one posterior draw each; R^2 fitted on 225, measured on 75" in out
    assert [line.split()[0] for line in out.splitlines()[2:-1]] == ["1-5", "all"]
    assert result["lz"].shape == result["fit_kl"].shape == (5,)
    assert torch.isnan(result["r2"][0]) and not torch.isnan(result["r2"][1:]).any()
    # the last row: L^z and fit KL summed over the steps, R^2 and its floor averaged
    lz, fit_kl, r2, floor = map(float, out.splitlines()[-2].split()[1:5])
    assert lz == pytest.approx(result["lz"].sum().item(), abs=0.006)
    assert fit_kl == pytest.approx(result["fit_kl"].sum().item(), abs=0.006)
    assert r2 == pytest.approx(result["r2"][1:].mean().item(), abs=6e-4)
    assert floor == pytest.approx(result["floor"][1:].mean().item(), abs=6e-4)
    joint = out.splitlines()[-1]
    assert joint.startswith(f"all steps together, the {len(result['active'])} of 15 dimensions")
    assert joint.endswith(f"fit KL {result['joint_kl']:.2f} jointly, "
                          f"{result['block_kl']:.2f} step by step; with each step's images "
                          f"shuffled apart {result['apart_kl']:.2f} and "
                          f"{result['apart_block_kl']:.2f}")
    # a joint fit never has less KL than its blocks (Fischer's inequality: det <= the product
    # of the blocks' dets), and shuffling apart leaves the blocks as they were
    assert len(result["active"]) > 1
    assert result["joint_kl"] >= result["block_kl"] - 1e-9
    assert result["apart_block_kl"] == pytest.approx(result["block_kl"], abs=1e-9)
    with pytest.raises(DrawError, match="not two-digit MNIST's 1x60x60"):
        fit.main(str(path), n=300, read=True)
