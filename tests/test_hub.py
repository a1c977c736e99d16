"""hubconf.py: torch.hub.load(REPO, NAME, source="local") returns every model shipped in
pretrained/, the one the file holds, ready to sample and evaluate; the entries follow the files."""
import shutil
from pathlib import Path

import pytest
import torch

from draw.checkpoint import CheckpointError, load_classifier, load_model, save_checkpoint
from draw.classifier import AttentionClassifier, ClassifierConfig
from draw.datasets import get_data
from draw.model import DrawConfig, DrawModel, nll_bound
from draw.pretrained import entry_name, entry_points, load_pretrained

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "pretrained").glob("*_model.pkl"))


def test_every_shipped_model_is_an_entry_named_after_its_file():
    assert "bmnist_r2_w5_t64" in [entry_name(path) for path in SHIPPED]
    assert sorted(entry_points(ROOT / "pretrained")) == sorted(map(entry_name, SHIPPED))


def check_ready(model: torch.nn.Module, path: Path) -> None:
    """The file's parameters, in eval mode, and it samples or classifies real digits."""
    assert not model.training
    if isinstance(model, DrawModel):
        expected, _ = load_model(path)
    else:
        expected, _ = load_classifier(path)
    assert type(model) is type(expected) and model.config == expected.config
    for (name, a), (_, b) in zip(model.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(a, b), name
    torch.manual_seed(0)
    cfg = model.config
    x = torch.rand(3, cfg.x_dim)
    if cfg.height == cfg.width == 28:           # real digits where the model reads 28x28
        x = get_data("sample").test[:3].float() / 255
    with torch.no_grad():
        if isinstance(model, DrawModel):
            canvases = model.sample(2)                                   # (T, 2, x_dim)
            assert canvases.shape == (cfg.n_iter, 2, cfg.x_dim)
            assert 0 <= canvases.min() and canvases.max() <= 1
            assert torch.isfinite(nll_bound(x, *model(x))).all()
        else:
            assert model(x).shape == (3, cfg.n_classes)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_torch_hub_loads_each_shipped_model(path):
    model = torch.hub.load(str(ROOT), entry_name(path), source="local")
    check_ready(model, path)


def test_a_model_file_added_is_an_entry_a_classifier_too(tmp_path):
    """A copy of the repository's hubconf.py beside other model files: one entry each, the
    classifier's file giving the classifier; an unknown name is torch.hub's one-line error."""
    shutil.copy(ROOT / "hubconf.py", tmp_path / "hubconf.py")
    (tmp_path / "pretrained").mkdir()
    torch.manual_seed(0)
    draw_model = DrawModel.from_config(DrawConfig(channels=1, height=8, width=8, n_iter=2,
                                                  enc_dim=6, dec_dim=5, z_dim=3, read_N=2,
                                                  write_N=3))
    classifier = AttentionClassifier.from_config(ClassifierConfig(height=12, width=12, n_iter=2,
                                                                  enc_dim=6, read_N=3))
    save_checkpoint(tmp_path / "pretrained" / "tiny-draw_model.pkl", draw_model)
    save_checkpoint(tmp_path / "pretrained" / "cluttered-mnist-t2_model.pkl", classifier)
    for name, kind in (("tiny_draw", DrawModel), ("cluttered_mnist_t2", AttentionClassifier)):
        model = torch.hub.load(str(tmp_path), name, source="local")
        assert isinstance(model, kind)
        check_ready(model, tmp_path / "pretrained" / f"{name.replace('_', '-')}_model.pkl")
    with pytest.raises(RuntimeError, match="Cannot find callable bmnist_r2_w5_t64 in hubconf"):
        torch.hub.load(str(tmp_path), "bmnist_r2_w5_t64", source="local")


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"gone_model\.pkl is missing: this copy of the "
                                              r"repository does not hold that pretrained model"):
        load_pretrained(tmp_path / "gone_model.pkl")
