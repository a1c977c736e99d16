#!/usr/bin/env python
"""Evaluate a DRAW model file: the test bound and an importance-sampled NLL (draw/training/evaluate.py).

    python evaluate.py bmnist-20250101-120000/bmnist-r2-w5-t64-enc256-dec256-z100-lr34_model.pkl
"""
from draw.training.evaluate import cli

if __name__ == "__main__":
    cli()
