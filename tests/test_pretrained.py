"""The DRAW models shipped in pretrained/, which the README's pictures and numbers come from:
the paper's configurations (Table 2, with and without attention), no training state, and
trained: a low bound on real digits."""
from pathlib import Path

import pytest
import torch

from draw.checkpoint import load_model
from draw.datasets import get_data
from draw.model import DrawConfig, DrawModel, nll_bound
from draw.outputs.sampling import write_samples

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"
# both trained with a zero initial state, before section 2.2's learned one was built
PAPER = dict(channels=1, height=28, width=28, n_iter=64, enc_dim=256, dec_dim=256, z_dim=100,
             learned_initial_state=False)
# file: (config, --attention, largest bound on the sample's digits; measured 70.5 at 32 + 68 epochs
# with attention, 75.5 at epoch 45 without)
MODELS = {
    "bmnist-r2-w5-t64_model.pkl": (DrawConfig(**PAPER, read_N=2, write_N=5), "2,5", 85),
    "bmnist-noattn-t64_model.pkl": (DrawConfig(**PAPER), "", 87),
}


@pytest.mark.parametrize("name", MODELS)
def test_the_papers_configuration_without_training_state(name):
    config, attention, _ = MODELS[name]
    model, ckpt = load_model(PRETRAINED / name)
    assert model.config == config
    assert ckpt["optimizer"] is None and ckpt["rng"] is None and "epoch_rng" not in ckpt
    assert ckpt["run"]["dataset"] == "bmnist" and ckpt["run"]["attention"] == attention
    # its history came with it: every finished epoch's validation bound, falling
    bounds = [row["valid_nll_bound"] for row in ckpt["log"][1:ckpt["epoch"] + 1]]
    assert len(bounds) == ckpt["epoch"] and bounds[-1] < bounds[0] < 200


@pytest.mark.parametrize("name", MODELS)
def test_it_is_trained_a_low_bound_on_real_digits(name):
    config, _, largest = MODELS[name]
    # the shipped sample's MNIST test digits, thresholded at one half: binary images like the
    # training data (bmnist binarizes MNIST stochastically)
    x = (get_data("sample").test[:100].float() / 255 >= 0.5).float()           # (100, 784)
    torch.manual_seed(0)
    model, _ = load_model(PRETRAINED / name)
    untrained = DrawModel.from_config(config)
    with torch.no_grad():
        trained_bound = nll_bound(x, *model(x)).mean().item()
        untrained_bound = nll_bound(x, *untrained(x)).mean().item()
    assert trained_bound < largest and untrained_bound > 500     # untrained: 543 and 550


@pytest.mark.parametrize("name", MODELS)
def test_it_draws(tmp_path, name):
    model, _ = load_model(PRETRAINED / name)
    boxes = model.config.write_N is not None
    written = write_samples(model, tmp_path, 2, 4, seed=1, boxes=boxes)
    assert [p.name for p in written[:2]] == ["sample.png", "time-000.png"]
    assert (tmp_path / "strip.png").stat().st_size > 0
