"""Training: the main loop and its extensions, run set-up, checkpoints, distributed data
parallelism and evaluation."""
