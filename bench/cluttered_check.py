"""A classifier's test error on a cluttered MNIST test set composed here, independently of the
project's generator (draw/datasets/scenes.py), by the protocol of DeepMind's mnist-cluttered
(Mnih et al. 2014, the task of the paper's Table 1):

- a black 100 x 100 canvas;
- 8 distractors: each an 8 x 8 patch cut at a uniform position from a uniformly drawn test
  digit, added at a uniform position (anywhere on the canvas), then the canvas clipped at 1;
- the test digit (28 x 28) added at a uniform position fully inside the canvas, clipped at 1.

Every one of MNIST's 10,000 test digits is used once, with its own distractors, from --seed
(numpy's PCG64, not the project's generator or seed). Issue 20 asks that Table 1's numbers hold
on such a set within noise: the binomial standard error of an error rate p on n images is
sqrt(p (1 - p) / n), 0.19 points at 4% on 10,000.

    python bench/cluttered_check.py pretrained/cluttered-mnist-t8_model.pkl --seed 7
"""
import math

import numpy as np
import torch

from draw.checkpoint import load_classifier
from draw.cli import ArgumentParser, run
from draw.datasets import get_data
from draw.training.classify import ClassifyTask

CANVAS, DIGIT, PATCH, N_DISTRACTORS = 100, 28, 8, 8


def compose_cluttered(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 28, 28) float digits in [0, 1] -> (N, 100, 100) cluttered images, one per digit."""
    n = len(digits)
    out = np.zeros((n, CANVAS, CANVAS), dtype=np.float32)
    for i in range(n):
        canvas = out[i]
        for source in rng.integers(0, n, N_DISTRACTORS):
            sy, sx = rng.integers(0, DIGIT - PATCH + 1, 2)
            ty, tx = rng.integers(0, CANVAS - PATCH + 1, 2)
            canvas[ty:ty + PATCH, tx:tx + PATCH] += digits[source, sy:sy + PATCH, sx:sx + PATCH]
        np.minimum(canvas, 1, out=canvas)
        y, x = rng.integers(0, CANVAS - DIGIT + 1, 2)
        canvas[y:y + DIGIT, x:x + DIGIT] += digits[i]
        np.minimum(canvas, 1, out=canvas)
    return out


def main(model: str, seed: int, data_dir: str | None, batch_size: int) -> None:
    classifier, _ = load_classifier(model)
    mnist = get_data("mnist", data_dir)
    digits = mnist.test.numpy().reshape(-1, DIGIT, DIGIT).astype(np.float32) / 255
    labels = mnist.test_labels
    images = compose_cluttered(digits, np.random.default_rng(seed))
    x = torch.from_numpy(images.reshape(len(images), -1))
    y = torch.as_tensor(labels, dtype=torch.int64)
    batches = ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size))
    error = ClassifyTask(classifier).evaluate(batches)["error"]
    stderr = 100 * math.sqrt(error / 100 * (1 - error / 100) / len(x))
    print(f"{model}: test error {error:.2f}% +- {stderr:.2f} (one standard error) on "
          f"{len(x):,} cluttered test images composed by bench/cluttered_check.py, seed {seed}")


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a classifier's *_model.pkl")
    parser.add_argument("--seed", type=int, default=7, help="seed of the composition")
    parser.add_argument("--data-dir", default=None, help="where mnist is converted")
    parser.add_argument("--batch-size", type=int, default=500, help="images per batch")
    run(main, parser.parse_args())
