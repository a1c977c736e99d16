"""The root scripts sample.py, plot-kl.py and attention.py, headless, on tiny files in tmp_path.

Each script runs once as a real subprocess with the venv's python and no display; the many
bad-input cases run the same scripts in-process (runpy), which checks the same code paths
(argument parsing, `draw.cli.run`) without paying for a new interpreter each time.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import draw.outputs.sampling
import draw.memory
from draw.checkpoint import load_model, save_checkpoint, save_log
from draw.model import DrawConfig, DrawModel
from draw.outputs.plotting import BOX_COLOR, image_grid
from draw.outputs.sampling import write_samples
from inline import ROOT, run_inline

T = 4
CFG = DrawConfig(channels=1, height=12, width=10, n_iter=T, enc_dim=8, dec_dim=8, z_dim=4,
                 read_N=2, write_N=3)


def tiny_model(cfg: DrawConfig = CFG) -> DrawModel:
    """An untrained model whose canvases visibly change at every step and whose write windows
    lie inside the image (the classic N(0, 0.01) initialisation barely writes anything)."""
    torch.manual_seed(0)
    model = DrawModel.from_config(cfg)
    with torch.no_grad():
        model.decoder.weight_ih.normal_(0.0, 1.0)
        if cfg.write_N is None:
            model.writer.transform.weight.normal_(0.0, 3.0)
        else:
            model.writer.w_trafo.weight.normal_(0.0, 3.0)
            model.writer.z_trafo.weight.normal_(0.0, 0.3)
            model.writer.z_trafo.bias.copy_(torch.tensor([0.0, 0.0, -1.5, 0.0, 0.0]))
    return model


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny_model.pkl"
    save_checkpoint(path, tiny_model(), epoch=3, iteration=30)
    return path


@pytest.fixture
def log_file(tmp_path):
    rows = []
    for e in range(1, 6):
        row = {"epoch": e, "iteration": 10 * e, "train_nll_bound": 100.0 - e,
               "valid_nll_bound": 101.0 - e, "test_nll_bound": 102.0 - e,
               "train_total_gradient_norm": 1.0 / e, "train_total_step_norm": 0.1}
        row.update({f"train_kl_term_{t}": e * (t + 1.0) for t in range(T)})
        rows.append(row)
    path = tmp_path / "tiny_log.pkl"
    save_log(path, rows)
    return path


def run_script(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY",
                                                            "MPLBACKEND")}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def gif_frames(path: Path) -> tuple[list[np.ndarray], list[int]]:
    with Image.open(path) as gif:
        frames, durations = [], []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("RGB")))
            durations.append(gif.info["duration"])
    return frames, durations


def test_sample_script_writes_grid_steps_and_gif(tmp_path, model_file):
    out = tmp_path / "out"
    result = run_script("sample.py", model_file, "--channels", 1, "--size", "12x10",
                        "--grid", "2x3", "--n-samples", 5, "--seed", 7, "--boxes",
                        "--scale", 2, "--output-dir", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    size = (3 * 2 * 10 + 2, 2 * 2 * 12 + 1)                 # 2x3 cells of 24x20, 1-px gaps
    frames, durations = gif_frames(out / "sequence.gif")
    assert len(frames) == T and durations == [100] * (T - 1) + [1000]
    assert all(frame.shape == (size[1], size[0], 3) for frame in frames)
    for t in range(T):
        with Image.open(out / f"time-{t:03d}.png") as png:
            assert png.size == size
            step = np.asarray(png.convert("RGB"))
        np.testing.assert_array_equal(frames[t], step)       # the GIF is lossless here
        assert (step == BOX_COLOR).all(axis=-1).any()        # write windows are boxed
    assert not (out / f"time-{T:03d}.png").exists()
    # strip.png: the 5 samples (rows) at every one of the T steps (columns), boxes included:
    # its cells are the frames' cells
    with Image.open(out / "strip.png") as png:
        strip = np.asarray(png.convert("RGB"))
    assert strip.shape == (5 * 25 - 1, T * 21 - 1, 3)
    for k in range(5):
        for t in range(T):
            top, left = (k // 3) * 25, (k % 3) * 21
            np.testing.assert_array_equal(strip[k * 25:k * 25 + 24, t * 21:t * 21 + 20],
                                          frames[t][top:top + 24, left:left + 20])
    # sample.png: the bare final canvases of the same seed, as the package computes them
    reference = tmp_path / "reference"
    model, _ = load_model(model_file)
    write_samples(model, reference, 2, 3, n=5, seed=7, scale=2)
    with Image.open(out / "sample.png") as got, Image.open(reference / "sample.png") as want:
        assert got.mode == "L" and got.size == size
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert np.asarray(Image.open(out / "sample.png")).std() > 10    # not a blank picture


def test_write_samples_default_grid_and_no_boxes(tmp_path):
    model = tiny_model(DrawConfig(channels=3, height=6, width=5, n_iter=3, enc_dim=8, dec_dim=8,
                                  z_dim=4))
    written = write_samples(model, tmp_path, 2, 2, seed=0)
    assert [p.name for p in written] == ["sample.png", "time-000.png", "time-001.png",
                                         "time-002.png", "sequence.gif", "strip.png"]
    canvases = model.sample(4, draw.outputs.sampling.prior_noise(model, 4, seed=0))
    want = image_grid(canvases[-1].view(4, 3, 6, 5), 2, 2)
    with Image.open(tmp_path / "sample.png") as got:
        assert got.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    frames, _ = gif_frames(tmp_path / "sequence.gif")
    assert len(frames) == 3 and frames[0].shape == (2 * 7 - 1, 2 * 6 - 1, 3)
    # strip.png without boxes: 4 samples down, the 3 steps across, the canvases themselves
    with Image.open(tmp_path / "strip.png") as png:
        strip = np.asarray(png)
    assert strip.shape == (4 * 7 - 1, 3 * 6 - 1, 3)
    for k in range(4):
        for t in range(3):
            cell = canvases[t, k].view(3, 6, 5).clamp(0, 1).mul(255).round().byte()
            np.testing.assert_array_equal(strip[k * 7:k * 7 + 6, t * 6:t * 6 + 5],
                                          cell.permute(1, 2, 0).numpy())


def test_temperature_scales_the_prior_noise_of_one_seed(tmp_path, model_file, monkeypatch):
    """--temperature 0.5 draws z_t ~ N(0, 0.25 I): the seed's own draws halved, so both sets of
    samples pair up; 1 is the model's P(Z_t), the default."""
    model, _ = load_model(model_file)
    u = draw.outputs.sampling.prior_noise(model, 6, seed=4)
    assert torch.equal(draw.outputs.sampling.prior_noise(model, 6, seed=4, temperature=1), u)
    torch.testing.assert_close(draw.outputs.sampling.prior_noise(model, 6, seed=4,
                                                                 temperature=0.5), 0.5 * u,
                               rtol=0, atol=0)
    assert run_inline("sample.py", model_file, "--n-samples", 6, "--seed", 4, "--temperature",
                      0.5, "--output-dir", tmp_path / "cool", monkeypatch=monkeypatch) == 0
    want = image_grid(model.sample(6, 0.5 * u)[-1].view(6, 1, 12, 10), 2, 3)
    with Image.open(tmp_path / "cool" / "sample.png") as got:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # and the pictures do differ from the model's own samples of the same seed
    write_samples(model, tmp_path / "warm", 2, 3, seed=4)
    with Image.open(tmp_path / "warm" / "sample.png") as warm:
        assert not np.array_equal(np.asarray(warm), np.asarray(want))


def test_plot_kl_script_writes_nontrivial_pictures_and_html(tmp_path, log_file):
    result = run_script("plot-kl.py", log_file, "--show", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # --show without a display: a warning, the files, and success
    assert result.stderr.strip().startswith("warning: --show needs a display")
    for name in ("tiny_kl.png", "tiny_kl_heatmap.png"):
        with Image.open(tmp_path / name) as png:
            pixels = np.asarray(png.convert("RGB")).astype(int)
        assert pixels.shape == (600, 800, 3)
        colors = np.unique(pixels.reshape(-1, 3), axis=0)
        assert len(colors) > 50                              # axes, labels and a colour map
        # viridis' ends: the smallest KL is dark purple, the largest yellow
        for end in ((68, 1, 84), (253, 231, 37)):
            assert (np.abs(pixels - end).sum(axis=-1) < 40).sum() > 20, end
    html = (tmp_path / "tiny_log.html").read_text()
    assert "train_nll_bound" in html and "Bokeh" in html


def test_attention_script_default_image(tmp_path):
    result = run_script("attention.py", "--N", 8, "--output-dir", "att", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "att" / "original.png") as original:
        assert original.size == (128, 150)
        pixels = np.asarray(original.convert("RGB"))
    # default window: centre (74.5, 63.5), delta = 128 / 16 = 8, span 64 pixels
    red = (pixels == BOX_COLOR).all(axis=-1)
    assert red[43, 32:96].all() and red[43 + 63, 32:96].all() and red[43:107, 32].all()
    with Image.open(tmp_path / "att" / "read.png") as read:
        assert read.size == (8 * 8, 8 * 8) and np.asarray(read).std() > 10
    with Image.open(tmp_path / "att" / "write.png") as write:
        written = np.asarray(write.convert("L")).astype(int)
        assert write.size == (128, 150)
    # write paints back inside the window only (the filters fall off within a few sigma)
    assert written[75, 64] > 50 and written[5, 5] == 0 and written[145, 120] == 0


def test_attention_demo_reads_back_a_picture_exactly(tmp_path):
    from draw.outputs.attention_demo import load_image, read_and_write
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(tmp_path / "grey.png")
    image = load_image(tmp_path / "grey.png")
    assert image.shape == (1, 9, 7)
    # a 7 x 7 window with stride 1 and tiny sigma over the middle 7 rows is the picture itself
    glimpse = read_and_write(image, 7, center=(4.0, 3.0), delta=1.0, sigma=0.05)
    np.testing.assert_allclose(glimpse.read[0].numpy(), pixels[1:8] / 255.0, atol=1e-6)


def fails(capsys, code, expected_code=1, contains=""):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == expected_code
    assert len(err) == 1 and err[0].startswith("error: ") and contains in err[0], err
    return err[0]


def test_sample_bad_inputs_one_line(tmp_path, model_file, capsys, monkeypatch):
    run = lambda *a, **k: fails(capsys, run_inline("sample.py", *a, monkeypatch=monkeypatch), **k)
    out = ["--output-dir", tmp_path / "s"]
    run(model_file, "--channels", 3, "--size", 32, *out, contains="1x12x10")
    run(model_file, "--size", 28, *out, contains="--channels/--size")
    run(model_file, "--size", "3x", *out, expected_code=2, contains="--size")
    run(model_file, "--grid", "2x2", "--n-samples", 5, *out, contains="do not fit")
    run(model_file, "--duration-ms", 5, *out, expected_code=2, contains="at least 10")
    for bad in (0, -0.5, "nan", "inf", "warm"):
        run(model_file, "--temperature", bad, *out, expected_code=2, contains="--temperature")
    # GIF's 16-bit delays: an OverflowError after sample.png and the frames had been written
    run(model_file, "--duration-ms", 10 ** 12, *out, contains="sequence.gif of 4 steps "
        "(--duration-ms, --hold-last-ms) would last 3,000,000,001,000 ms; a GIF holds at most "
        "655,350 ms")
    run(model_file, "--hold-last-ms", 655_100, *out, contains="would last 655,400 ms")
    run(tmp_path / "missing_model.pkl", *out, contains="missing_model.pkl")
    # not ours: another program's pickle, a truncated file, a later version, a log
    torch.save({"state_dict": {}}, tmp_path / "foreign.pkl")
    run(tmp_path / "foreign.pkl", *out, contains="not a draw-model file")
    (tmp_path / "truncated.pkl").write_bytes(model_file.read_bytes()[:500])
    run(tmp_path / "truncated.pkl", *out, contains="truncated.pkl")
    ckpt = torch.load(model_file, weights_only=True)
    torch.save({**ckpt, "version": 99}, tmp_path / "future.pkl")
    run(tmp_path / "future.pkl", *out, contains="version 99")
    save_log(tmp_path / "a_log.pkl", [])
    run(tmp_path / "a_log.pkl", *out, contains="not a draw-model file")
    # --boxes on a model that writes the whole canvas
    plain = tmp_path / "plain_model.pkl"
    save_checkpoint(plain, DrawModel.from_config(DrawConfig(height=4, width=4, n_iter=2,
                                                            enc_dim=4, dec_dim=4, z_dim=2)))
    run(plain, "--boxes", *out, contains="write attention")
    # the output directory is a file: the OSError is one line too
    (tmp_path / "taken").write_text("not a directory")
    run(model_file, "--output-dir", tmp_path / "taken", contains="taken")
    assert not (tmp_path / "s").exists()


def test_sample_ctrl_c_leaves_complete_files(tmp_path, model_file, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(draw.outputs.sampling, "save_gif", interrupted)
    code = run_inline("sample.py", model_file, "--n-samples", 4, "--output-dir", tmp_path / "s",
                      monkeypatch=monkeypatch)
    # Ctrl-C is one plain line (draw/cli.py), not an error
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1 and "interrupted" in err[0], err
    written = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert written == ["sample.png"] + [f"time-{t:03d}.png" for t in range(T)]   # no temp files
    with Image.open(tmp_path / "s" / "sample.png") as png:
        png.load()                                            # complete, decodable


def test_plot_kl_bad_inputs_one_line(tmp_path, model_file, log_file, capsys, monkeypatch):
    run = lambda *a, **k: fails(capsys, run_inline("plot-kl.py", *a, monkeypatch=monkeypatch), **k)
    run(model_file, contains="not a draw-log file")
    run(tmp_path / "nothing_log.pkl", contains="nothing_log.pkl")
    (tmp_path / "cut_log.pkl").write_bytes(log_file.read_bytes()[:300])
    run(tmp_path / "cut_log.pkl", contains="cut_log.pkl")
    run(log_file, "--split", "valid", contains="valid_kl_term_0")
    run(log_file, "--split", "nope", expected_code=2, contains="--split")
    save_log(tmp_path / "empty_log.pkl", [])
    run(tmp_path / "empty_log.pkl", contains="no rows")
    # a crafted log naming step 10^12: refused, not 10^12 keys spelled out
    save_log(tmp_path / "far_log.pkl", [{"epoch": 1, "iteration": 1, "train_kl_term_0": 1.0,
                                         f"train_kl_term_{10 ** 12}": 1.0}])
    run(tmp_path / "far_log.pkl", contains="no rows with train_kl_term_0.. values")
    assert not list(tmp_path.glob("*.png"))


def test_attention_bad_inputs_one_line(tmp_path, capsys, monkeypatch):
    run = lambda *a, **k: fails(capsys, run_inline("attention.py", *a, monkeypatch=monkeypatch), **k)
    run(tmp_path / "missing.png", contains="missing.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    run(tmp_path / "junk.png", contains="junk.png")
    run("--N", 1000, contains="N=1000")
    run("--center", "3", expected_code=2, contains="--center")
    run("--delta", -1, contains="positive")


def huge_model_file(tmp_path, **sizes) -> Path:
    """A model file whose config claims sizes no machine holds, with a tiny state dict."""
    path = tmp_path / "huge_model.pkl"
    ckpt = torch.load(path.parent / "tiny_model.pkl", weights_only=True)
    torch.save({**ckpt, "config": {**ckpt["config"], **sizes}}, path)
    return path


def test_sample_refuses_what_cannot_fit_before_allocating(tmp_path, model_file, capsys,
                                                          monkeypatch):
    run = lambda *a, **k: fails(capsys, run_inline("sample.py", *a, monkeypatch=monkeypatch), **k)
    out = ["--output-dir", tmp_path / "s"]
    line = run(model_file, "--n-samples", 1_000_000_000, *out, contains="needs about")
    assert "sampling 1,000,000,000 images" in line and "this machine has" in line
    for sizes in ({"enc_dim": 100_000_000}, {"n_iter": 1_000_000_000},
                  {"height": 60000, "width": 60000, "read_N": None, "write_N": None}):
        line = run(huge_model_file(tmp_path, **sizes), *out, contains="needs about")
    # pictures too large to write (GIF holds 65535 pixels a side), however few the samples
    run(model_file, "--grid", "3000x3000", "--n-samples", 4, *out, contains="65,535 pixels")
    line = run(model_file, "--scale", 100_000, "--n-samples", 1, *out, contains="needs about")
    assert "sampling 1 image of 4 steps at --scale 100000" in line
    for seed in (-1, 2 ** 64):
        run(model_file, "--seed", seed, *out, expected_code=2, contains="--seed")
    assert not (tmp_path / "s").exists()


def test_sample_huge_request_in_a_real_process_is_one_line(tmp_path, model_file):
    result = run_script("sample.py", model_file, "--n-samples", 1_000_000_000, "--output-dir",
                        "s", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "needs about" in result.stderr
    assert not (tmp_path / "s").exists()


def test_sampling_in_chunks_matches_one_pass_and_shows_progress(monkeypatch, capsys):
    model = tiny_model()
    u = draw.outputs.sampling.prior_noise(model, 7, seed=3)
    want, want_att = model.sample(7, u, return_attention=True)
    monkeypatch.setattr(draw.outputs.sampling, "CHUNK", 3)              # 3 + 3 + 1 samples
    monkeypatch.setattr(draw.outputs.sampling, "BAR_DELAY", 0.0)
    got, got_att = draw.outputs.sampling.draw_samples(model, u, attention=True)
    torch.testing.assert_close(got, want)
    assert got_att.keys() == want_att.keys()
    for key in want_att:
        torch.testing.assert_close(got_att[key], want_att[key])
    bar = capsys.readouterr().err
    assert "sampling:" in bar and "0/7" in bar                               # a bar appeared


def test_plot_kl_picks_the_splits_the_log_has(tmp_path, capsys, monkeypatch):
    # a run stopped in its first epoch: only the evaluation before training, valid and test
    row = {"epoch": 0, "iteration": 0, "valid_nll_bound": 200.0, "test_nll_bound": 201.0}
    row.update({f"{s}_kl_term_{t}": t + 1.0 for s in ("valid", "test") for t in range(T)})
    save_log(tmp_path / "cut_log.pkl", [row])
    assert run_inline("plot-kl.py", tmp_path / "cut_log.pkl", monkeypatch=monkeypatch) == 0
    assert "1 rows x 4 steps of valid KL" in capsys.readouterr().out
    for name in ("cut_kl.png", "cut_kl_heatmap.png", "cut_log.html"):
        assert (tmp_path / name).stat().st_size > 0
    line = fails(capsys, run_inline("plot-kl.py", tmp_path / "cut_log.pkl", "--split", "train",
                                    "--surface", tmp_path / "other.png", monkeypatch=monkeypatch))
    assert line == ("error: the log has no rows with train_kl_term_0.. values; it has the KL "
                    "terms of valid, test: use --split valid or --split test")
    assert not (tmp_path / "other.png").exists()


def test_plot_kl_dpi_is_checked_before_anything_is_written(tmp_path, log_file, capsys,
                                                            monkeypatch):
    run = lambda *a, **k: fails(capsys, run_inline("plot-kl.py", *a, monkeypatch=monkeypatch), **k)
    run(log_file, "--dpi", 0, expected_code=2, contains="--dpi")
    run(log_file, "--dpi=-5", expected_code=2, contains="--dpi")
    run(log_file, "--dpi", "many", expected_code=2, contains="--dpi")
    run(log_file, "--dpi", 1366, contains="10,928x8,196 pixels")
    run(log_file, "--dpi", 10 ** 9, contains="65,535 pixels a side")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_log.pkl"]
    # the largest allowed resolution passes the same check (rendering it takes a minute)
    from draw.outputs.klplot import FIGSIZE, MAX_DPI
    from draw.outputs.plotting import check_picture_size
    assert MAX_DPI == 1365
    check_picture_size(FIGSIZE[0] * MAX_DPI, FIGSIZE[1] * MAX_DPI, "the largest figure")


def png_header(width: int, height: int) -> bytes:
    """A small grey PNG file that claims width x height pixels (its pixel data is cut short)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_attention_refuses_huge_images_and_outputs_before_writing(tmp_path, capsys, monkeypatch):
    run = lambda *a, **k: fails(capsys, run_inline("attention.py", *a, monkeypatch=monkeypatch), **k)
    out = ["--output-dir", tmp_path / "att"]
    # Pillow refuses past twice its limit (DecompressionBombError) and warns past it: both refused
    for side in (60000, 10000):
        (tmp_path / "bomb.png").write_bytes(png_header(side, side))
        run(tmp_path / "bomb.png", *out, contains="more than 89,478,485 pixels")
    run("--read-scale", 0, *out, expected_code=2, contains="--read-scale")
    run("--read-scale", -3, *out, expected_code=2, contains="--read-scale")
    run("--N", 0, *out, expected_code=2, contains="--N")
    run("--read-scale", 10 ** 6, *out, contains="--read-scale 1000000")
    run("--delta", "nan", *out, contains="finite")
    run("--sigma", "inf", *out, contains="finite")
    run("--center", "inf,3", *out, contains="finite")
    assert not (tmp_path / "att").exists()                      # not even original.png


def test_attention_memory_is_checked_before_decoding(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(draw.memory, "available_memory", lambda device=None: 10 ** 6)
    Image.fromarray(np.zeros((300, 200), np.uint8), mode="L").save(tmp_path / "grey.png")
    line = fails(capsys, run_inline("attention.py", tmp_path / "grey.png", "--output-dir",
                                    tmp_path / "att", monkeypatch=monkeypatch))
    assert "reading the 200x300 image" in line and "needs about 0.0 GB" in line
    assert not (tmp_path / "att").exists()
