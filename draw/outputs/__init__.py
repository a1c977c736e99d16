"""What people look at: image grids and GIFs, sampling, KL plots, the live page and the
attention demo."""
