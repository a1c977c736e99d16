"""Tests for draw/outputs/plotting.py: grids, PNG/GIF files and write-attention boxes."""
import numpy as np
import pytest
import torch
from PIL import Image

import draw.outputs.plotting
from draw.model import DrawConfig, DrawModel
from draw.errors import DrawError
from draw.outputs.attention_demo import main as attention_main
from draw.outputs.plotting import (BOX_COLOR, MAX_PIXELS, MAX_SIDE, SEPARATOR, PictureSizeError,
                                   check_output_dir, check_picture_size, draw_box, grid_size,
                                   grid_shape, image_grid, sampling_frames, save_gif, save_png,
                                   window_box)

SEP = round(SEPARATOR * 255)


def test_image_grid_layout_exact():
    images = np.array([[[[0.0, 0.5, 1.0], [1.0, 0.25, 0.0]]],
                       [[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]]])       # (2, 1, 2, 3)
    grid = image_grid(images, rows=1, cols=3)
    assert grid.mode == "L" and grid.size == (3 * 3 + 2, 2)
    expected = np.full((2, 11), SEP, dtype=np.uint8)
    expected[:, 0:3] = [[0, 128, 255], [255, 64, 0]]
    expected[:, 4:7] = [[255, 255, 255], [0, 0, 0]]
    np.testing.assert_array_equal(np.asarray(grid), expected)       # third cell stays background


def test_image_grid_rows_and_rgb():
    rng = np.random.default_rng(0)
    images = rng.random((5, 3, 4, 2)).astype(np.float32)
    grid = image_grid(torch.from_numpy(images), rows=2, cols=3)
    assert grid.mode == "RGB" and grid.size == (3 * 2 + 2, 2 * 4 + 1)
    pixels = np.asarray(grid)                                         # (H, W, 3)
    # image 4 sits in row 1, column 1
    np.testing.assert_array_equal(pixels[5:9, 3:5], np.rint(images[4].transpose(1, 2, 0) * 255))
    assert (pixels[4] == SEP).all() and (pixels[:, 2] == SEP).all()  # separators
    # a tensor and an ndarray give the same picture
    assert np.array_equal(np.asarray(image_grid(images, 2, 3)), pixels)


def test_image_grid_clips_and_rejects_bad_shapes():
    grid = image_grid(np.array([[[[-1.0, 2.0]]]]), 1, 1)
    np.testing.assert_array_equal(np.asarray(grid), [[0, 255]])
    with pytest.raises(ValueError, match="do not fit"):
        image_grid(np.zeros((5, 1, 2, 2)), 2, 2)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        image_grid(np.zeros((1, 2, 2, 2)), 1, 1)
    with pytest.raises(ValueError, match="shape"):
        image_grid(np.zeros((2, 2, 2)), 1, 2)


def test_grid_shape():
    assert grid_shape(1) == (1, 1)
    assert grid_shape(100) == (10, 10)
    assert grid_shape(10) == (3, 4)
    assert grid_shape(17) == (4, 5)
    with pytest.raises(ValueError):
        grid_shape(0)


def test_save_png_round_trip(tmp_path):
    images = np.random.default_rng(1).random((3, 3, 5, 4))
    grid = image_grid(images, 1, 3)
    path = tmp_path / "new" / "dir" / "grid.png"
    save_png(grid, path)
    with Image.open(path) as loaded:
        assert loaded.format == "PNG"
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(grid))


def test_save_png_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "grid.png"
    save_png(Image.new("L", (2, 2), 7), path)
    before = path.read_bytes()
    image = Image.new("L", (2, 2), 200)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image, "save", disk_full)
    with pytest.raises(OSError):
        save_png(image, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]      # no temporary file left


def _gif_frames(path):
    with Image.open(path) as gif:
        frames, durations = [], []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("L")))
            durations.append(gif.info["duration"])
        return frames, durations, gif.size, gif.info.get("loop")


def test_save_gif_frames_durations_and_pixels(tmp_path):
    frames = [Image.fromarray(np.full((3, 4), 40 * t, np.uint8), mode="L") for t in range(5)]
    path = tmp_path / "seq.gif"
    save_gif(frames, path, duration_ms=50, hold_last_ms=2000)
    decoded, durations, size, loop = _gif_frames(path)
    assert len(decoded) == 5 and size == (4, 3) and loop == 0
    assert durations == [50, 50, 50, 50, 2000]                       # the last frame is held
    for t, frame in enumerate(decoded):
        assert (frame == 40 * t).all()


def test_save_gif_merges_identical_frames_keeping_duration(tmp_path):
    a = Image.new("L", (2, 2), 0)
    b = Image.new("L", (2, 2), 255)
    save_gif([a, a.copy(), b], tmp_path / "seq.gif", duration_ms=100, hold_last_ms=1000)
    _, durations, _, _ = _gif_frames(tmp_path / "seq.gif")
    assert durations == [200, 1000]


def test_save_gif_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="at least one frame"):
        save_gif([], tmp_path / "a.gif")
    with pytest.raises(ValueError, match="one size"):
        save_gif([Image.new("L", (2, 2)), Image.new("L", (3, 2))], tmp_path / "a.gif")
    assert not list(tmp_path.iterdir())


def test_window_box_exact_pixels():
    # grid points 13.5 + (i - 3) * 2 = 9.5 .. 17.5; widened by one pixel each side: [8.5, 18.5],
    # whose pixel centres are 9 .. 18 (N * delta = 10 pixels)
    assert window_box(13.5, 13.5, 2.0, 5) == (9, 9, 18, 18)
    # vertical and horizontal are independent: x from center_x, y from center_y
    assert window_box(center_y=4.0, center_x=10.0, delta=1.0, N=3) == (9, 3, 11, 5)
    # an edge that falls on a pixel centre is that pixel: [10 - 2, 10 + 2]
    assert window_box(10.0, 10.0, 1.0, 4) == (8, 8, 12, 12)
    # narrower than a pixel: the pixel that holds the centre
    assert window_box(3.2, 6.7, 0.05, 2) == (7, 3, 7, 3)
    # windows reaching past the image keep their true coordinates (draw_box cuts them)
    assert window_box(0.0, 27.0, 3.0, 4) == (21, -6, 33, 6)


def test_window_box_scaled():
    # pixel k covers scaled pixels 3k .. 3k+2; the span [8.5, 18.5] becomes scaled [27, 57)
    assert window_box(13.5, 13.5, 2.0, 5, scale=3) == (27, 27, 56, 56)
    assert window_box(3.0, 3.0, 0.01, 2, scale=3) == (10, 10, 10, 10)  # centre of pixel 3


def test_draw_box_cuts_windows_at_the_image_edge():
    cell = np.zeros((5, 6, 3), np.uint8)
    draw_box(cell, (-3, 1, 10, 3))                 # wider than the image: drawn along its sides
    expected = np.array([[0, 0, 0, 0, 0, 0],
                         [1, 1, 1, 1, 1, 1],
                         [1, 0, 0, 0, 0, 1],
                         [1, 1, 1, 1, 1, 1],
                         [0, 0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal((cell == BOX_COLOR).all(axis=-1), expected)
    np.testing.assert_array_equal(cell[~expected], 0)
    before = cell.copy()
    draw_box(cell, (7, 0, 9, 2))                   # entirely right of the image: nothing
    draw_box(cell, (1, -4, 3, -1))                 # entirely above it: nothing
    np.testing.assert_array_equal(cell, before)
    draw_box(cell, (2, 2, 2, 2))                   # a one-pixel window is one pixel
    assert (cell == BOX_COLOR).all(axis=-1).sum() == expected.sum() + 1


def _red_mask(frame):
    pixels = np.asarray(frame.convert("RGB")).astype(int)
    return (pixels == np.array(BOX_COLOR)).all(axis=-1)


def _box_mask(shape, box):
    """Where the outline of box (x0, y0, x1, y1), cut down to an image of `shape` (H, W), lies:
    pixel (y, x) is on it when it is inside both and on one of the cut box's four sides."""
    H, W = shape
    x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], W - 1), min(box[3], H - 1)
    y, x = np.mgrid[0:H, 0:W]
    inside = (x0 <= x) & (x <= x1) & (y0 <= y) & (y <= y1)
    return inside & ((x == x0) | (x == x1) | (y == y0) | (y == y1))


def test_sampling_frames_without_attention_are_grids():
    canvases = torch.rand(4, 6, 2 * 3 * 5)                              # (T, n, C*H*W) with C=2
    with pytest.raises(ValueError, match="C = 1 or 3"):
        sampling_frames(canvases, (2, 3, 5), 2, 3)
    canvases = torch.rand(4, 6, 3 * 5)
    frames = sampling_frames(canvases, (1, 3, 5), 2, 3)
    assert len(frames) == 4
    for t, frame in enumerate(frames):
        assert np.array_equal(np.asarray(frame),
                              np.asarray(image_grid(canvases[t].view(6, 1, 3, 5), 2, 3)))
    with pytest.raises(ValueError, match="canvases must have shape"):
        sampling_frames(canvases, (1, 4, 5), 2, 3)


def test_sampling_frames_boxes_at_known_windows():
    T, n, H, W = 2, 3, 8, 10
    canvases = np.zeros((T, n, H * W))
    attention = {"center_y": torch.tensor([[3.5, 0.0, 4.0], [2.0, 2.0, 2.0]]),
                 "center_x": torch.tensor([[4.5, 9.0, 4.0], [2.0, 6.0, 2.0]]),
                 "delta": torch.tensor([[1.0, 2.0, 0.01], [1.5, 1.0, 1.0]])}
    frames = sampling_frames(canvases, (1, H, W), rows=2, cols=2, attention=attention, N=4)
    assert len(frames) == T and frames[0].size == (2 * W + 1, 2 * H + 1)
    cells = [(0, 0), (0, W + 1), (H + 1, 0)]
    for t, frame in enumerate(frames):
        red = _red_mask(frame)
        for k, (top, left) in enumerate(cells):
            box = window_box(attention["center_y"][t, k].item(), attention["center_x"][t, k].item(),
                             attention["delta"][t, k].item(), 4)
            np.testing.assert_array_equal(red[top:top + H, left:left + W], _box_mask((H, W), box))
        # boxes are clipped to their own cell: nothing red on separators or the empty cell
        assert not red[H].any() and not red[:, W].any() and not red[H + 1:, W + 1:].any()
    # spot check the first one: centre (3.5, 4.5), span 4 pixels -> columns 3..6, rows 2..5
    assert window_box(3.5, 4.5, 1.0, 4) == (3, 2, 6, 5)


def test_sampling_frames_boxes_match_model_attention():
    torch.manual_seed(0)
    cfg = DrawConfig(channels=1, height=12, width=10, n_iter=3, enc_dim=8, dec_dim=8, z_dim=4,
                     read_N=2, write_N=3)
    model = DrawModel.from_config(cfg)
    with torch.no_grad():
        # small windows (delta about a pixel) that wander with h_dec, so that every box lies
        # at least partly inside its image and each step's box differs
        model.decoder.weight_ih.normal_(0.0, 1.0)
        model.writer.z_trafo.weight.normal_(0.0, 0.3)
        model.writer.z_trafo.bias.copy_(torch.tensor([0.0, 0.0, -1.5, 0.0, 0.0]))
    canvases, attention = model.sample(4, return_attention=True)
    scale = 2
    frames = sampling_frames(canvases, (1, 12, 10), 2, 2, attention=attention, N=3, scale=scale)
    assert len(frames) == cfg.n_iter
    assert frames[0].size == (2 * scale * 10 + 1, 2 * scale * 12 + 1)
    H, W = scale * 12, scale * 10
    for t, frame in enumerate(frames):
        red = _red_mask(frame)
        for k in range(4):
            top, left = (k // 2) * (H + 1), (k % 2) * (W + 1)
            box = window_box(attention["center_y"][t, k].item(), attention["center_x"][t, k].item(),
                             attention["delta"][t, k].item(), 3, scale)
            np.testing.assert_array_equal(red[top:top + H, left:left + W], _box_mask((H, W), box))
            assert red[top:top + H, left:left + W].any()
    with pytest.raises(ValueError, match="grid size N"):
        sampling_frames(canvases, (1, 12, 10), 2, 2, attention=attention)


def test_picture_size_limits():
    check_picture_size(MAX_SIDE, MAX_PIXELS // MAX_SIDE, "the widest picture")
    check_picture_size(1, 1, "one pixel")
    for width, height, expected in ((MAX_SIDE + 1, 1, "65,536x1 pixels"),
                                    (1, MAX_SIDE + 1, "1x65,536"),
                                    (MAX_SIDE, MAX_PIXELS // MAX_SIDE + 1, "in all"),
                                    (0, 5, "empty"), (5, -1, "empty")):
        with pytest.raises(PictureSizeError, match=expected):
            check_picture_size(width, height, "a picture")
    # grid_size is the size image_grid really makes
    image = image_grid(np.zeros((5, 1, 4, 3)), 2, 3)
    assert image.size == grid_size(2, 3, 4, 3) == (3 * 4 - 1, 2 * 5 - 1)


def test_save_gif_shows_progress_when_slow(tmp_path, monkeypatch, capsys, terminal):
    frames = [Image.new("L", (4, 3), v) for v in (0, 80, 160, 240)]
    save_gif(frames, tmp_path / "quick.gif")
    assert capsys.readouterr().err == ""                      # fast: no bar at all
    monkeypatch.setattr(draw.outputs.plotting, "BAR_DELAY", 0.0)
    save_gif(frames, tmp_path / "not-a-terminal.gif")
    assert capsys.readouterr().err == ""                      # a log file: no bar
    terminal()
    save_gif(frames, tmp_path / "slow.gif")
    assert "writing slow.gif" in capsys.readouterr().err
    with Image.open(tmp_path / "slow.gif") as gif:
        assert gif.n_frames == 4                              # every frame went through the bar


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("x")
    check_output_dir(tmp_path)
    check_output_dir(tmp_path / "new" / "deeper")       # folders still to be made
    for bad in (taken, taken / "sub"):
        with pytest.raises(DrawError, match=f"{taken} is a file, not a folder"):
            check_output_dir(bad)
    with pytest.raises(DrawError, match="is a file, not a folder"):
        attention_main(output_dir=str(taken))
    assert taken.read_text() == "x"
