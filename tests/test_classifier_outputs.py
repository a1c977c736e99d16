"""The classifier's Figure 4 picture: layout, boxes where the windows are, bad input."""
import numpy as np
import pytest
import torch

from draw.outputs.glimpses import glimpse_grid
from draw.outputs.plotting import BOX_COLOR


def _attention(T, n, cy, cx, delta):
    full = lambda v: torch.full((T, n), float(v))            # noqa: E731
    return {"center_y": full(cy), "center_x": full(cx), "delta": full(delta)}


def test_layout_and_box_positions():
    n, T, H, W = 2, 3, 20, 30
    images = torch.zeros(n, 1, H, W)
    att = _attention(T, n, cy=9.5, cx=14.5, delta=1.0)
    att["center_x"][1, 0] = 5.5                 # image 0, glimpse 2: a window further left
    picture = np.array(glimpse_grid(images, att, N=4))
    assert picture.shape == (n * (H + 1) - 1, T * (W + 1) - 1, 3)
    red = np.all(picture == BOX_COLOR, axis=-1)
    # a 4 x 4 window of stride 1 centred on (9.5, 14.5) covers pixels 8..11 x 13..16; its
    # outline in the cell of image k, glimpse t starts at (k*(H+1) + 8, t*(W+1) + 13)
    for k in range(n):
        for t in range(T):
            top, left = k * (H + 1), t * (W + 1)
            cell = red[top:top + H, left:left + W]
            x0 = 4 if (k, t) == (0, 1) else 13         # centre 5.5: pixels 4..7
            rows, cols = np.nonzero(cell)
            assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 11, x0, x0 + 3)
            assert cell.sum() == 12                     # the outline of a 4 x 4 box
    # separators stay grey: nothing is drawn outside the cells
    assert not red[H, :].any() and not red[:, W].any()


def test_scale_enlarges_cells():
    picture = glimpse_grid(torch.rand(1, 1, 5, 6), _attention(2, 1, 2, 2.5, 1.0), N=2, scale=3)
    assert picture.size == (2 * 18 + 1, 15)


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        glimpse_grid(torch.zeros(2, 5, 5), _attention(2, 2, 2, 2, 1), N=2)
    with pytest.raises(ValueError, match="\\(T, n\\)"):
        glimpse_grid(torch.zeros(3, 1, 5, 5), _attention(2, 2, 2, 2, 1), N=2)
    with pytest.raises(ValueError, match="scale"):
        glimpse_grid(torch.zeros(2, 1, 5, 5), _attention(2, 2, 2, 2, 1), N=2, scale=0)
