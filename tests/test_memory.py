"""Memory estimates (draw/memory.py) against the built model and what autograd really keeps."""
import dataclasses
import random

import pytest
import torch

import draw.memory
from draw.classifier import AttentionClassifier, ClassifierConfig, classification_loss
from draw.memory import (GB, ResourceError, activation_bytes, available_memory, check_memory,
                         format_gb, inference_bytes, parameter_bytes, parameter_count,
                         training_bytes)
from draw.model import DrawConfig, DrawModel, nll_bound


def random_configs(n: int, seed: int) -> list[DrawConfig]:
    rng = random.Random(seed)
    configs = []
    for _ in range(n):
        H, W = rng.choice([6, 12, 28]), rng.choice([5, 16, 28])
        configs.append(DrawConfig(channels=rng.choice([1, 3]), height=H, width=W,
                                  n_iter=rng.choice([1, 3]), enc_dim=rng.choice([8, 40, 256]),
                                  dec_dim=rng.choice([8, 40, 256]), z_dim=rng.choice([2, 30, 100]),
                                  read_N=rng.choice([None, 2, 5]), write_N=rng.choice([None, 3, 5])))
    return configs


def random_classifier_configs(n: int, seed: int) -> list[ClassifierConfig]:
    rng = random.Random(seed)
    configs = []
    for _ in range(n):
        H, W = rng.choice([12, 28, 60, 100]), rng.choice([12, 28, 60, 100])
        configs.append(ClassifierConfig(channels=rng.choice([1, 3]), height=H, width=W,
                                        n_iter=rng.choice([1, 3, 8]),
                                        enc_dim=rng.choice([8, 64, 256]),
                                        read_N=min(rng.choice([2, 5, 12]), H, W),
                                        n_classes=rng.choice([2, 10])))
    return configs


def build(cfg):
    kind = AttentionClassifier if isinstance(cfg, ClassifierConfig) else DrawModel
    return kind.from_config(cfg)


@pytest.mark.parametrize("cfg", random_configs(12, seed=1) + [
    DrawConfig(n_iter=64, read_N=2, write_N=5),            # the paper's bmnist model: 962,811
    DrawConfig(channels=3, height=32, width=32, enc_dim=512, dec_dim=512),
    ClassifierConfig()] + random_classifier_configs(6, seed=1))
def test_parameter_count_is_exact(cfg):
    model = build(cfg)
    assert parameter_count(cfg) == sum(p.numel() for p in model.parameters())
    assert parameter_bytes(cfg) == 4 * parameter_count(cfg)
    assert parameter_bytes(cfg, torch.float64) == 8 * parameter_count(cfg)


def test_the_paper_model_has_the_known_count():
    assert parameter_count(DrawConfig(n_iter=64, read_N=2, write_N=5)) == 962_811
    # without section 2.2's learned c_0 (784), h_0^enc and h_0^dec (256 each)
    assert parameter_count(DrawConfig(n_iter=64, read_N=2, write_N=5,
                                      learned_initial_state=False)) == 961_515


def saved_bytes(cfg: DrawConfig | ClassifierConfig, batch: int) -> int:
    """Bytes of the distinct tensors autograd saves for the backward pass of one bound (or of
    one classifier's cross-entropy)."""
    model = build(cfg)
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.rand(batch, cfg.x_dim, generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if isinstance(cfg, ClassifierConfig):
            classification_loss(model(x), torch.zeros(batch, dtype=torch.long)).mean()
        else:
            c, kl = model(x)
            nll_bound(x, c, kl).mean()
    return sum(storages.values())


@pytest.mark.parametrize("cfg", random_configs(8, seed=2) + random_classifier_configs(8, seed=2))
def test_activation_estimate_within_a_factor_of_what_autograd_saves(cfg):
    # the batch-dependent part: the parameters (saved by the matrix products) cancel out
    measured = saved_bytes(cfg, 16) - saved_bytes(cfg, 8)
    estimate = activation_bytes(cfg, 16) - activation_bytes(cfg, 8)
    assert 0.75 * measured <= estimate <= 1.5 * measured, (estimate, measured)
    # without autograd one step is alive at a time: T times less, whatever T is
    per_step = activation_bytes(cfg, 8, grad=False)
    assert activation_bytes(dataclasses.replace(cfg, n_iter=7), 8, grad=False) == per_step
    assert training_bytes(cfg, 8) == 4 * parameter_bytes(cfg) + activation_bytes(cfg, 8)


def test_inference_keeps_every_step_of_draw_and_none_of_the_classifier():
    """Without autograd DRAW still keeps its noise, posterior and KL terms of every step
    (a model file claiming n_iter 10^9 is refused by its memory); the classifier keeps
    nothing of a glimpse but its state."""
    cfg = DrawConfig(n_iter=10, z_dim=20)
    longer = DrawConfig(n_iter=20, z_dim=20)
    assert inference_bytes(longer, 50) - inference_bytes(cfg, 50) == 50 * 10 * (4 * 20 + 1) * 4
    assert inference_bytes(cfg, 50) == (parameter_bytes(cfg) + activation_bytes(cfg, 50, False)
                                        + 50 * 10 * 81 * 4)
    assert inference_bytes(DrawConfig(n_iter=10 ** 9), 1) > 10 ** 12
    classifier = ClassifierConfig(n_iter=8)
    assert inference_bytes(ClassifierConfig(n_iter=10 ** 9), 500) == \
        inference_bytes(classifier, 500) == \
        parameter_bytes(classifier) + activation_bytes(classifier, 500, grad=False)


def test_available_memory_reads_meminfo_and_falls_back_to_physical_pages(monkeypatch, tmp_path):
    have = available_memory()
    physical = draw.memory.os.sysconf("SC_PHYS_PAGES") * \
        draw.memory.os.sysconf("SC_PAGE_SIZE")
    assert 0 < have <= physical
    real_open = open

    def no_meminfo(path, *args, **kwargs):
        if path == "/proc/meminfo":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_meminfo)
    assert available_memory() == physical


def test_check_memory_message(monkeypatch):
    monkeypatch.setattr(draw.memory, "available_memory", lambda device=None: 8 * GB)
    check_memory(8 * GB, "a request that just fits")
    with pytest.raises(ResourceError) as info:
        check_memory(300_000 * GB, "sampling 1,000,000,000 images")
    assert str(info.value) == ("sampling 1,000,000,000 images needs about 300,000 GB of memory, "
                               "this machine has 8.0 GB available")
    assert format_gb(int(1.25 * GB)) == "1.2 GB" and format_gb(1234 * GB) == "1,234 GB"
