"""The datasets: their original files (URLs, checksums), image shapes, splits and converters.

One small converter per dataset turns the verified original files into three uint8 arrays
(train, valid, test), each (N, C*H*W) in (C, H, W) order, with binary datasets stored as 0 and
255 so that every dataset reads as u8 / 255; a labelled dataset adds "train_labels",
"valid_labels" and "test_labels", (N,) uint8 class numbers. `REGISTRY` maps a name to its
`DatasetSpec`, whose `splits` line says how its splits are made; `supported_datasets` and
`labelled_datasets` are derived from it.

Datasets made from another one (`base`) have no files of their own: two-digit-mnist is composed
from mnist once, when it is converted, and stored like the others; cluttered-mnist is composed
batch by batch while training (draw/datasets/scenes.py), so nothing of it is stored.

Where a dataset publishes no validation split, the last images of its training set are held out,
as is usual for generative models, so that the test set is only used for the final numbers. The
DRAW paper's CIFAR model (section 4.5) saw all 50,000 training images; it reports only samples,
so 5,000 are held out here too: a run's valid numbers then measure what it has not trained on.
svhn-multi is stored 64x64 and seen as 54x54 patches (draw/datasets/svhn.py, crops.py).
"""
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from draw.datasets.errors import DatasetError
from draw.datasets.files import FileSpec, Original
from draw.datasets.formats import (load_mat, parse_amat, parse_idx_images, parse_idx_labels,
                                   read_cifar_archive)
from draw.datasets.scenes import two_digit_binarized_splits, two_digit_splits
from draw.datasets.svhn import PATCH, SIDE, svhn_multi_splits

# "train" / "valid" / "test" -> (N, C*H*W) uint8; "<split>_labels" -> (N,) uint8 if labelled
Splits = dict[str, np.ndarray]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to get one dataset from its published files to converted arrays."""
    name: str                                   # as `get_data` and the CLI know it
    shape: tuple[int, int, int]                 # (C, H, W) of one image, as the model sees it
    binary: bool                                # every pixel 0 or 1 (stored as 0 or 255)
    files: tuple[FileSpec, ...]                 # the original files (none for the "sample")
    convert: Callable[[dict[str, Original]], Splits] | None   # {file name: Original} -> Splits
    about: str                                  # one line: what it is, where it comes from
    splits: str                                 # one line: how train / valid / test are made
    labelled: bool = False                      # a class label per image
    base: str | None = None                     # the dataset it is made from (and its files)
    # base's `Data` -> Splits, for a dataset made from `base` and stored; None for one composed
    # on the fly (cluttered-mnist)
    derive: Callable[..., Splits] | None = None
    # (C, H, W) of the stored images when the model sees `shape` patches of them (svhn-multi)
    crop_of: tuple[int, int, int] | None = None

    @property
    def shipped(self) -> bool:
        """Whether it ships inside the package (the "sample")."""
        return not self.files and self.base is None

    @property
    def stored_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images in the converted file."""
        return self.crop_of or self.shape

    @property
    def on_the_fly(self) -> bool:
        """Whether it is composed batch by batch and never stored (cluttered-mnist)."""
        return self.base is not None and self.derive is None


def _hold_out(images: np.ndarray, n_valid: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a training set into (train, valid) = (all but the last n_valid, the last n_valid)."""
    if len(images) <= n_valid:
        raise DatasetError(f"only {len(images)} training images; need more than {n_valid} to "
                           "hold out a validation set")
    return images[:-n_valid], images[-n_valid:]


def _bmnist(files: dict[str, Original]) -> Splits:
    splits = {}
    for split in ("train", "valid", "test"):
        f = files[f"binarized_mnist_{split}.amat"]
        splits[split] = parse_amat(f.data, f.where, width=28 * 28) * np.uint8(255)
    return splits


def _idx(files: dict[str, Original], name: str) -> np.ndarray:
    f = files[name]
    images = parse_idx_images(f.data, f.where)                           # (N, H, W)
    if images.shape[1:] != (28, 28):
        raise DatasetError(f"{f.where}: images are {images.shape[1]}x{images.shape[2]}; "
                           "expected 28x28")
    return images.reshape(len(images), 28 * 28)


def _labels(files: dict[str, Original], name: str, n: int) -> np.ndarray:
    f = files[name]
    labels = parse_idx_labels(f.data, f.where)                           # (N,)
    if len(labels) != n:
        raise DatasetError(f"{f.where}: {len(labels)} labels for {n} images")
    return labels


def _mnist_images(files: dict[str, Original]) -> Splits:
    train, valid = _hold_out(_idx(files, "train-images-idx3-ubyte"), 10_000)
    return {"train": train, "valid": valid, "test": _idx(files, "t10k-images-idx3-ubyte")}


def _mnist(files: dict[str, Original]) -> Splits:
    """MNIST's images and labels; the labels are held out exactly as the images are."""
    splits = _mnist_images(files)
    n_train = len(splits["train"]) + len(splits["valid"])
    labels = _labels(files, "train-labels-idx1-ubyte", n_train)
    splits["train_labels"], splits["valid_labels"] = labels[:-10_000], labels[-10_000:]
    splits["test_labels"] = _labels(files, "t10k-labels-idx1-ubyte", len(splits["test"]))
    return splits


def _cifar10(files: dict[str, Original]) -> Splits:
    f = files["cifar-10-python.tar.gz"]
    members = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
    batches = read_cifar_archive(f.data, f.where, members + ["cifar-10-batches-py/test_batch"])
    train, valid = _hold_out(np.concatenate(batches[:-1]), 5_000)
    return {"train": train, "valid": valid, "test": batches[-1]}


def _svhn_images(f: Original) -> np.ndarray:
    X = load_mat(f.data, f.where, ["X"])["X"]                            # (H, W, C, N)
    if X.dtype != np.uint8 or X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise DatasetError(f"{f.where}: X is {X.dtype} {X.shape}; expected uint8 (32, 32, 3, N)")
    return X.transpose(3, 2, 0, 1).reshape(X.shape[3], 3 * 32 * 32)      # (N, C*H*W)


def _svhn2(files: dict[str, Original]) -> Splits:
    train, valid = _hold_out(_svhn_images(files["train_32x32.mat"]), 5_000)
    return {"train": train, "valid": valid, "test": _svhn_images(files["test_32x32.mat"])}


def _silhouettes(files: dict[str, Original]) -> Splits:
    f = files["caltech101_silhouettes_28_split1.mat"]
    names = {"train": "train_data", "valid": "val_data", "test": "test_data"}
    mat = load_mat(f.data, f.where, list(names.values()))
    splits = {}
    for split, var in names.items():
        x = mat[var]                                                     # (N, 784)
        if x.ndim != 2 or x.shape[1] != 28 * 28 or not np.isin(x, (0, 1)).all():
            raise DatasetError(f"{f.where}: {var} is {x.dtype} {x.shape}; expected (N, 784) "
                               "of 0 and 1")
        # MATLAB flattens column by column, so transpose each image to get it upright; and
        # invert so that the shape, not the background, is 1, like the ink in MNIST. Both as in
        # the usual VAE preprocessing (Tomczak & Welling 2018, VampPrior; van den Berg et al.
        # 2018, Sylvester flows: `1 - x.reshape(-1, 28, 28).reshape(-1, 784, order="F")`).
        images = x.reshape(-1, 28, 28).transpose(0, 2, 1).reshape(-1, 28 * 28)
        splits[split] = ((1 - images) * 255).astype(np.uint8)
    return splits


def _idx_files(urls: tuple[str, ...], sha256: dict[str, str]) -> tuple[FileSpec, ...]:
    """FileSpecs for the gzipped IDX files named in `sha256` (images, and labels where listed)."""
    return tuple(FileSpec(name, f"sha256:{digest}", tuple(f"{base}/{name}.gz" for base in urls))
                 for name, digest in sha256.items())


_LAROCHELLE = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist"
# A copy in the Keras datasets bucket, seen in public code; the checksum vouches for it.
_KERAS_MIRROR = "https://storage.googleapis.com/tensorflow/tf-keras-datasets"
_BMNIST_SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
# sha256 of the decompressed IDX files (the gzip wrappers differ between mirrors).
_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# Fashion-MNIST's label files are not read: images only, as before (no checksums of their
# decompressed bytes were at hand to verify them with).
_FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
}

REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec(
        "bmnist", (1, 28, 28), True,
        tuple(FileSpec(f"binarized_mnist_{split}.amat", f"sha256:{sha256}",
                       (f"{_LAROCHELLE}/binarized_mnist_{split}.amat",
                        f"{_KERAS_MIRROR}/binarized_mnist_{split}.amat"),
                       check=lambda data, where: parse_amat(data, where, width=28 * 28))
              for split, sha256 in _BMNIST_SHA256.items()),
        _bmnist,
        "MNIST with Larochelle & Murray's (2011) fixed binarization, the DRAW paper's benchmark",
        "the published 50,000 / 10,000 / 10,000 (the test file is sorted by digit)"),
    DatasetSpec(
        "mnist", (1, 28, 28), False,
        _idx_files(("https://ossci-datasets.s3.amazonaws.com/mnist",
                    "https://storage.googleapis.com/cvdf-datasets/mnist",
                    "http://yann.lecun.com/exdb/mnist"), _MNIST_SHA256),
        _mnist,
        "MNIST grayscale digits with their labels (LeCun, Cortes, Burges; CC BY-SA 3.0)",
        "train = first 50,000 training images, valid = last 10,000, test = the 10,000 test",
        labelled=True),
    DatasetSpec(
        "fashion-mnist", (1, 28, 28), False,
        _idx_files(("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion"),
                   _FASHION_SHA256),
        _mnist_images,
        "Fashion-MNIST grayscale clothing images (Xiao, Rasul, Vollgraf 2017; MIT)",
        "train = first 50,000 training images, valid = last 10,000, test = the 10,000 test"),
    DatasetSpec(
        "cifar10", (3, 32, 32), False,
        (FileSpec("cifar-10-python.tar.gz",
                  "sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                  ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)),),
        _cifar10,
        "CIFAR-10 colour images, python release (Krizhevsky 2009)",
        "train = first 45,000 training images, valid = last 5,000 held out (the DRAW paper "
        "trained on all 50,000), test = the 10,000 test"),
    DatasetSpec(
        "svhn2", (3, 32, 32), False,
        (FileSpec("train_32x32.mat",
                  "sha256:435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
                  ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",)),
         FileSpec("test_32x32.mat",
                  "sha256:cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
                  ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",))),
        _svhn2,
        "SVHN format 2, cropped 32x32 house-number digits (Netzer et al. 2011)",
        "train = first 68,257 of train_32x32, valid = last 5,000, test = test_32x32 (26,032); "
        "extra_32x32 unused"),
    DatasetSpec(
        "svhn-multi", (3, PATCH, PATCH), False,
        # Only Adler-32 checksums of these archives were found published (deeplearning4j's
        # SvhnDataFetcher, which checks the whole archive with java.util.zip.Adler32).
        tuple(FileSpec(f"{folder}.tar.gz", f"adler32:{adler}",
                       (f"http://ufldl.stanford.edu/housenumbers/{folder}.tar.gz",), large=True)
              for folder, adler in (("train", 979655493), ("extra", 132781169),
                                    ("test", 1629515343))),
        svhn_multi_splits,
        "SVHN format 1 house numbers cropped around the digits as Goodfellow et al. 2013, 64x64, "
        "seen as 54x54 patches (the DRAW paper's SVHN); 2.9 GB in memory",
        "train + extra less a random 4,701 (fixed seed) = train, those 4,701 = valid, "
        "test.tar.gz = test; numbers of over 5 digits dropped; 54x54 patches: random in train "
        "(new every epoch, from the run's seed), the centre in valid and test",
        crop_of=(3, SIDE, SIDE)),
    DatasetSpec(
        "silhouettes", (1, 28, 28), True,
        # Only an md5 is published for this file (Marlin's page; DeepMind's dm_nevis lists it).
        (FileSpec("caltech101_silhouettes_28_split1.mat", "md5:4483e9c14b188fd09937f9ea6f9ea777",
                  ("https://people.cs.umass.edu/~marlin/data/"
                   "caltech101_silhouettes_28_split1.mat",)),),
        _silhouettes,
        "Caltech-101 Silhouettes 28x28 (Marlin et al. 2010), split 1",
        "the published 4,100 / 2,264 / 2,307"),
    DatasetSpec(
        "cluttered-mnist", (1, 100, 100), False, (), None,
        "100x100 cluttered MNIST, labelled (Mnih et al. 2014; DRAW Table 1): one digit and 8 "
        "8x8 distractor patches, composed from mnist on the fly, never stored",
        "train = fresh every epoch from mnist's 50,000 (seeded), valid / test = fixed 10,000 "
        "each from mnist's valid / test",
        labelled=True, base="mnist"),
    DatasetSpec(
        "two-digit-mnist", (1, 60, 60), False, (), None,
        "60x60 two-digit MNIST (DRAW Figure 8): two random digits at random places, composed "
        "from mnist when converted",
        "60,000 / 10,000 / 10,000 composed from mnist's train / valid / test digits (fixed seed)",
        base="mnist", derive=two_digit_splits),
    DatasetSpec(
        "two-digit-bmnist", (1, 60, 60), True, (), None,
        "two-digit-mnist binarized (not in the paper): each pixel drawn once as 0 or 1 with its "
        "grey level as the probability, as binarized MNIST's were; composed from mnist",
        "the same 60,000 / 10,000 / 10,000 canvases as two-digit-mnist, binarized (fixed seed)",
        base="mnist", derive=two_digit_binarized_splits),
    DatasetSpec(
        "sample", (1, 28, 28), False, (), None,
        "5,000 real MNIST training digits shipped in the package (draw/data/mnist_5k.md)",
        "4,000 / 500 / 500, 400 / 50 / 50 of each digit, fixed"),
)}

# what get_data returns as image tensors, that is, everything a DRAW model can train on
supported_datasets: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if not s.on_the_fly)
# what get_labelled returns with a class label per image
labelled_datasets: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.labelled)
