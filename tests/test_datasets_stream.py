"""Minibatches: order, shuffling, the tail batch, dynamic binarization, dtypes and devices."""
import pytest
import torch

from draw.datasets import batches


def numbered(n: int, d: int = 6) -> torch.Tensor:
    """(n, d) uint8 images whose first pixel is their index, the others arbitrary."""
    images = torch.randint(0, 256, (n, d), dtype=torch.uint8, generator=torch.Generator()
                           .manual_seed(n))
    images[:, 0] = torch.arange(n, dtype=torch.uint8)
    return images


def ids(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0] * 255).round().long().tolist()


def test_in_order_with_the_tail_batch():
    images = numbered(10)
    out = list(batches(images, 4))
    assert [len(b) for b in out] == [4, 4, 2]
    assert torch.equal(torch.cat(out), images.float() / 255)
    assert all(b.dtype == torch.float32 and b.device.type == "cpu" for b in out)
    assert [len(b) for b in batches(images, 4, drop_last=True)] == [4, 4]
    assert [len(b) for b in batches(images, 5, drop_last=True)] == [5, 5]
    assert [len(b) for b in batches(images, 20)] == [10]
    assert list(batches(images, 20, drop_last=True)) == []
    assert list(batches(images[:0], 3)) == []


def test_shuffled_is_a_permutation_and_reproducible():
    images = numbered(50)
    first = list(batches(images, 8, generator=torch.Generator().manual_seed(1)))
    again = list(batches(images, 8, generator=torch.Generator().manual_seed(1)))
    other = list(batches(images, 8, generator=torch.Generator().manual_seed(2)))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    order = [i for b in first for i in ids(b)]
    assert sorted(order) == list(range(50)) and order != list(range(50))
    assert order != [i for b in other for i in ids(b)]
    for b in first:                                          # each row stays its own image
        assert torch.equal(b, images[ids(b)].float() / 255)


def test_one_generator_gives_a_new_order_every_epoch():
    images, generator = numbered(50), torch.Generator().manual_seed(3)
    epoch1 = [i for b in batches(images, 8, generator=generator) for i in ids(b)]
    epoch2 = [i for b in batches(images, 8, generator=generator) for i in ids(b)]
    assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2


def test_dynamic_binarization():
    n, d = 400, 784
    gray = torch.full((n, d), 64, dtype=torch.uint8)                  # p = 64/255
    binary = torch.randint(0, 2, (n, d), dtype=torch.uint8) * 255
    images = torch.cat([gray, binary], dim=1)                         # (n, 2d)
    torch.manual_seed(0)                                              # no generator: in order,
    out = torch.cat(list(batches(images, 64, binarize=True)))         # the global generator
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert abs(out[:, :d].mean().item() - 64 / 255) < 0.01           # 313,600 Bernoulli draws
    assert torch.equal(out[:, d:], binary.float() / 255)              # 0 and 1 stay exact


def test_binarization_is_reproducible_and_fresh_every_batch():
    images = torch.full((20, 100), 128, dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = list(batches(images, 10, generator=g1, binarize=True))
    b = list(batches(images, 10, generator=g2, binarize=True))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])                               # same pixels, new draws
    c = list(batches(images, 10, generator=g1, binarize=True))       # the next epoch
    assert not torch.equal(a[0], c[0])


def test_binarizing_binary_images_changes_nothing():
    images = torch.randint(0, 2, (30, 50), dtype=torch.uint8) * 255
    out = torch.cat(list(batches(images, 7, binarize=True)))
    assert torch.equal(out, images.float() / 255)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtype(dtype):
    images = numbered(9)
    out = list(batches(images, 4, dtype=dtype))
    assert all(b.dtype == dtype for b in out)
    assert torch.equal(torch.cat(out), (images.float() / 255).to(dtype))


def test_bad_arguments():
    with pytest.raises(ValueError, match="torch.uint8"):
        next(batches(torch.zeros(4, 3), 2))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        next(batches(torch.zeros(4, 3, 2, dtype=torch.uint8), 2))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            next(batches(numbered(4), bad))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_same_batches_as_the_cpu():
    images = numbered(100, 784)
    kwargs = dict(batch_size=16, binarize=True)
    cpu = list(batches(images, generator=torch.Generator().manual_seed(0), **kwargs))
    gpu = list(batches(images, generator=torch.Generator().manual_seed(0), device="cuda",
                       **kwargs))
    assert all(g.device.type == "cuda" for g in gpu)
    assert all(torch.equal(c, g.cpu()) for c, g in zip(cpu, gpu, strict=True))
    on_device = list(batches(images.cuda(), generator=torch.Generator("cuda").manual_seed(0),
                             device="cuda", **kwargs))
    assert sorted(i for b in on_device for i in ids(b.cpu())) == list(range(100))
