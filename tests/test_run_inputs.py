"""Odd inputs to a run that once went wrong: a model file copied under another name given to
--resume, an args.txt holding bytes that are not UTF-8, a config file's value of the wrong
type, the other script's run, a Ctrl-C while the last epoch is saved; and attention.py's
pictures of 16 bits and floats."""
import numpy as np
import pytest
import torch
from PIL import Image

import draw.training.extensions
from draw.checkpoint import load_checkpoint
from draw.errors import DrawError, Interrupted
from draw.outputs.attention_demo import AttentionDemoError, load_image
from draw.training.classify import ClassifierSettings
from draw.training.draw_job import main
from draw.training.settings import DrawSettings

TINY = dict(dataset="sample", subset=100, batch_size=50, n_iter=2, enc_dim=8, dec_dim=8,
            z_dim=3, attention="2,3", seed=3)


def the_run_dir(parent):
    (run_dir,) = [p for p in parent.iterdir() if p.is_dir()]
    return run_dir


def snapshot(path):
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    parent = tmp_path_factory.mktemp("one-epoch")
    main(**TINY, epochs=1, run_dir=str(parent))
    return the_run_dir(parent)


def copy_run(run_dir, to):
    to.mkdir()
    for name, data in snapshot(run_dir).items():
        (to / name.name).write_bytes(data)
    return to


def test_a_model_file_under_another_name_is_refused_and_the_run_is_untouched(one_epoch,
                                                                              tmp_path):
    run = copy_run(one_epoch, tmp_path / "run")
    (run / "epoch1.pkl").write_bytes((run / "sample_model.pkl").read_bytes())
    before = snapshot(run)
    for name in ("epoch1.pkl", "_model.pkl"):
        (run / name).write_bytes((run / "sample_model.pkl").read_bytes())
        before = snapshot(run)
        with pytest.raises(DrawError, match=rf"--resume {run / name}: a run's model file is "
                                            r"named NAME_model\.pkl"):
            main(resume=str(run / name), epochs=2)
        assert snapshot(run) == before          # no unnamed _model.pkl, _log.pkl beside it
        (run / name).unlink()
    main(resume=str(run / "sample_model.pkl"), epochs=2)
    assert load_checkpoint(run / "sample_model.pkl")["epoch"] == 2


def test_an_args_txt_that_is_not_utf8_is_kept_byte_for_byte(one_epoch, tmp_path):
    run = copy_run(one_epoch, tmp_path / "run")
    odd = b"python train-draw.py --run-dir /data/caf\xe9 --dataset sample\n"
    (run / "args.txt").write_bytes(odd)
    main(resume=str(run), epochs=2)
    text = (run / "args.txt").read_bytes()
    assert text.startswith(odd + b"# resumed\n")
    assert load_checkpoint(run / "sample_model.pkl")["epoch"] == 2


def test_a_config_value_of_the_wrong_type_names_the_file(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('dataset = "sample"\nz-dim = "x"\n')
    with pytest.raises(DrawError, match=rf"^--config {config}: --z-dim must be an integer, "
                                        r"got 'x'$"):
        DrawSettings.given({"config": str(config)})
    config.write_text("lr = 1\n")               # an integer is a valid rate, read as a float
    assert DrawSettings.given({"config": str(config)}) == {"learning_rate": 1.0}


def test_the_other_scripts_run_is_named_as_such():
    draw_run = DrawSettings(**TINY).stored()
    with pytest.raises(DrawError, match=r"run/config\.json has settings that "
                                        r"train-classifier\.py \(this version\) does not know: "
                                        r"\[.*'dec_dim'.*\]; a run of another script"):
        ClassifierSettings.resumed(draw_run, {}, "run/config.json")
    classifier_run = ClassifierSettings(dataset="cluttered-mnist").stored()
    with pytest.raises(DrawError, match=r"that train-draw\.py \(this version\) does not know: "
                                        r"\['read_lr'\]"):
        DrawSettings.resumed(classifier_run, {}, "run/config.json")


def test_a_ctrl_c_while_the_last_epoch_is_saved_says_the_run_is_complete(tmp_path,
                                                                          monkeypatch):
    finish = draw.training.extensions.FinishAfter.do

    def interrupted_at_the_end(self, which_callback, *args):
        finish(self, which_callback, *args)
        if self.main_loop.status["finish_requested"]:
            self.main_loop._on_sigint(None, None)      # as the signal handler is called

    monkeypatch.setattr(draw.training.extensions.FinishAfter, "do", interrupted_at_the_end)
    with pytest.raises(Interrupted) as stopped:
        main(**TINY, epochs=2, eval_subset=100, run_dir=str(tmp_path))
    run = the_run_dir(tmp_path)
    assert str(stopped.value) == (f"Ctrl-C after epoch 2, the last: the run is complete and "
                                  f"saved in {run}")
    ckpt = load_checkpoint(run / "sample_model.pkl")
    assert (ckpt["epoch"], ckpt["batch"]) == (2, 0)
    # and the whole valid split (the sample set's 500 images, not 100) was evaluated after it,
    # as in a run never interrupted
    assert [row.get("valid_examples") for row in ckpt["log"]] == [100, 100, 500]


def test_pictures_of_16_bits_and_floats_are_read_by_their_own_range(tmp_path):
    ramp = np.arange(64 * 64, dtype=np.float64).reshape(64, 64) / (64 * 64 - 1)
    wide = (ramp * 65535).round().astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I")
    torch.testing.assert_close(load_image(tmp_path / "wide.png")[0],
                               torch.from_numpy(wide / 65535.0).float())
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "float.tif")
    torch.testing.assert_close(load_image(tmp_path / "float.tif")[0],
                               torch.from_numpy(ramp).float())
    narrow = (ramp * 255).round().astype(np.uint8)
    Image.fromarray(narrow).save(tmp_path / "narrow.png")
    torch.testing.assert_close(load_image(tmp_path / "narrow.png")[0],
                               torch.from_numpy(narrow / 255.0).float())
    ramp[3, 4] = np.nan
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(AttentionDemoError, match="nan.tif: it holds values that are not "
                                                 "numbers"):
        load_image(tmp_path / "nan.tif")
