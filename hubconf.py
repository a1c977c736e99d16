"""torch.hub entry points: every model shipped in pretrained/, one entry per file.

    model = torch.hub.load("OWNER/draw", "bmnist_r2_w5_t64")                    # from GitHub
    model = torch.hub.load("path/to/draw", "bmnist_r2_w5_t64", source="local")  # a checkout
    torch.hub.list("OWNER/draw")                        # the names of all of them (GitHub only)

Names, loading and what an entry returns are in draw/pretrained.py.
"""
import pathlib

import draw.pretrained

# what torch.hub checks is importable before it imports this file: what loading a model needs
dependencies = ["torch", "numpy", "PIL", "scipy", "h5py", "tqdm"]

# the entries are the model files present, so a file added to pretrained/ needs no code here;
# only they are public callables in this module (torch.hub.list shows just the models)
globals().update(draw.pretrained.entry_points(pathlib.Path(__file__).parent / "pretrained"))
