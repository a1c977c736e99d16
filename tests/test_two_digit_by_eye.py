"""bench/two_digit_by_eye.py: the blind sheets put each canvas under the number its key gives,
and the score counts the judge's numbers by kind."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from draw.checkpoint import load_model, save_checkpoint
from draw.errors import DrawError
from draw.model import DrawConfig, DrawModel


@pytest.fixture
def eye(bench_script):
    return bench_script("two_digit_by_eye")


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    model = DrawModel.from_config(DrawConfig(height=60, width=60, n_iter=2, enc_dim=8, dec_dim=8,
                                             z_dim=2, read_N=2, write_N=5))
    path = tmp_path / "m_model.pkl"
    save_checkpoint(path, model)
    return str(path)


@pytest.fixture
def valid(eye, monkeypatch):
    """45 valid canvases of grey levels 0-255, each its own pattern, as get_data hands them."""
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (45, 3600), np.uint8))
    monkeypatch.setattr(eye, "get_data", lambda name, root=None: SimpleNamespace(valid=images))
    return images


def cell(sheet: np.ndarray, k: int) -> np.ndarray:
    """The k-th canvas (0-based) of a sheet, its red channel shrunk back to 60x60 (the number in
    its corner drawn over the first rows)."""
    size = 61 * 3
    top, left = (k // 6) * size, (k % 6) * size
    return sheet[top:top + 180:3, left:left + 180:3, 0]


def test_each_number_shows_the_canvas_its_key_names(eye, model_file, valid, tmp_path):
    out = tmp_path / "eye"
    kinds = eye.sheets(model_file, str(out), n=20, seed=3)
    key = json.loads((out / "key.json").read_text())
    assert key["kinds"] == kinds and key["n"] == 20 and key["seed"] == 3
    assert sorted(kinds) == ["data"] * 20 + ["reconstruction"] * 20 + ["sample"] * 20
    assert kinds != sorted(kinds)                                   # shuffled
    sheets = [np.array(Image.open(out / f"sheet-{s}.png")) for s in (1, 2)]
    assert sheets[0].shape == ((5 * 61 - 1) * 3, (6 * 61 - 1) * 3, 3)
    assert not (out / "sheet-3.png").exists()
    # each number shows what the key names, below the number's rows: valid canvases 0-19, the
    # reconstructions of 20-39 (no canvas and its reconstruction both), samples 0-19
    indices = {kind: sorted(i for i, k in zip(key["index"], kinds) if k == kind)
               for kind in ("data", "reconstruction", "sample")}
    assert indices == {"data": list(range(20)), "reconstruction": list(range(20, 40)),
                       "sample": list(range(20))}
    model, _ = load_model(model_file)
    model.eval()
    x = valid[:40].float() / 255
    generator = torch.Generator().manual_seed(3)                  # z as sheets() draws it
    with torch.no_grad():
        recon = torch.sigmoid(model(x[20:], model.noise(20, x, generator))[0])
        samples = model.sample(20, model.noise(20, x, generator))[-1]
    expected = {"data": x, "reconstruction": torch.cat([x[:20], recon]), "sample": samples}
    for k, (kind, i) in enumerate(zip(kinds, key["index"])):
        shown = cell(sheets[k // 30], k % 30)
        pixels = np.rint(expected[kind][i].view(60, 60).clamp(0, 1).numpy() * 255)
        assert np.array_equal(shown[10:], pixels[10:].astype(np.uint8)), (k, kind, i)
    # the same seed deals the same order; another seed another
    assert eye.sheets(model_file, str(tmp_path / "again"), n=20, seed=3) == kinds
    assert eye.sheets(model_file, str(tmp_path / "other"), n=20, seed=4) != kinds
    # at temperature 0.5 the same order and the seed's draws halved: only the samples change
    assert eye.sheets(model_file, str(tmp_path / "cool"), n=20, seed=3, temperature=0.5) == kinds
    assert json.loads((tmp_path / "cool" / "key.json").read_text())["temperature"] == 0.5
    generator = torch.Generator().manual_seed(3)
    model.noise(20, x, generator)
    with torch.no_grad():
        expected["sample"] = model.sample(20, 0.5 * model.noise(20, x, generator))[-1]
    cool = [np.array(Image.open(tmp_path / "cool" / f"sheet-{s}.png")) for s in (1, 2)]
    for k, (kind, i) in enumerate(zip(kinds, key["index"])):
        pixels = np.rint(expected[kind][i].view(60, 60).clamp(0, 1).numpy() * 255)
        assert np.array_equal(cell(cool[k // 30], k % 30)[10:], pixels[10:].astype(np.uint8))
    assert not np.array_equal(cool[0], sheets[0]) or not np.array_equal(cool[1], sheets[1])


def test_more_canvases_than_the_split_or_a_used_folder_are_refused(eye, model_file, valid,
                                                                    tmp_path):
    with pytest.raises(DrawError, match="--n 23 needs 46 of the 45 valid canvases"):
        eye.sheets(model_file, str(tmp_path / "eye"), n=23)
    eye.sheets(model_file, str(tmp_path / "eye"), n=20)
    key = (tmp_path / "eye" / "key.json").read_bytes()
    with pytest.raises(DrawError, match="is not an empty folder"):
        eye.sheets(model_file, str(tmp_path / "eye"), n=10)
    with pytest.raises(DrawError, match="is not an empty folder"):
        eye.sheets(model_file, str(tmp_path / "eye" / "key.json"), n=10)
    assert (tmp_path / "eye" / "key.json").read_bytes() == key


def test_score_counts_the_judged_numbers_of_each_kind(eye, tmp_path, capsys):
    kinds = ["sample", "data", "reconstruction", "data", "sample", "reconstruction"]
    (tmp_path / "key.json").write_text(json.dumps({"model": "m.pkl", "n": 2, "seed": 0,
                                                   "kinds": kinds}))
    answers = tmp_path / "answers.txt"
    answers.write_text("2, 4\n5")                                   # both data, one sample
    assert eye.score(str(tmp_path), str(answers)) == {"data": 1.0, "reconstruction": 0.0,
                                                      "sample": 0.5}
    out = capsys.readouterr().out
    assert "sample             1 of 2     50.0% (standard error 35.4%)" in out
    # a key from before --temperature is at 1; another temperature is said with the score
    assert out.startswith("m.pkl: canvases judged to show two recognisable digits\n")
    (tmp_path / "key.json").write_text(json.dumps({"model": "m.pkl", "n": 2, "seed": 0,
                                                   "temperature": 0.7, "kinds": kinds}))
    eye.score(str(tmp_path), str(answers))
    assert capsys.readouterr().out.startswith("m.pkl: canvases judged to show two recognisable "
                                              "digits (samples at temperature 0.7)\n")
    answers.write_text("2 7")
    with pytest.raises(DrawError, match=r"lists numbers that are on no sheet: \[7\]"):
        eye.score(str(tmp_path), str(answers))
    with pytest.raises(DrawError, match="cannot read the key or the answers"):
        eye.score(str(tmp_path / "nowhere"), str(answers))
