import torch

from course.data import NUM_CLASSES, epoch_orders, load_digit_splits, read_shipped_digits


def test_splits_are_disjoint_complete_and_stratified():
    digits = load_digit_splits()
    sizes = digits.sizes()
    assert sum(sizes.values()) == 1797
    assert sizes["train"] > 1200 and 250 < sizes["val"] < 300 and 250 < sizes["test"] < 300
    rows = [tuple(r.tolist()) for s in (digits.train, digits.val, digits.test) for r in s.x]
    # the digits contain a few exact duplicate images; disjointness is by sample, so compare counts
    assert len(rows) == 1797
    for split in (digits.val, digits.test):
        counts = torch.bincount(split.y, minlength=NUM_CLASSES)
        assert counts.min() >= 24, counts  # every digit present in every split


def test_split_is_fixed_and_seed_dependent():
    a, b = load_digit_splits(), load_digit_splits()
    assert torch.equal(a.test.y, b.test.y) and torch.equal(a.test.x, b.test.x)
    other = load_digit_splits(seed=99)
    assert not torch.equal(a.test.x, other.test.x)


def test_tensors_are_ready_for_torch():
    train = load_digit_splits().train
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.x.shape[1] == 64 and 0.0 <= train.x.min() and train.x.max() <= 1.0
    assert train.images().shape == (len(train), 1, 8, 8)


def test_loader_shuffles_reproducibly_and_covers_the_split():
    val = load_digit_splits().val
    first = torch.cat([y for _, y in val.loader(batch_size=32, shuffle=True, seed=5)])
    again = torch.cat([y for _, y in val.loader(batch_size=32, shuffle=True, seed=5)])
    plain = torch.cat([y for _, y in val.loader(batch_size=32)])
    assert torch.equal(first, again)
    assert not torch.equal(first, plain)
    assert torch.equal(first.sort().values, val.y.sort().values)


def test_split_to_device_keeps_values():
    val = load_digit_splits().val
    moved = val.to("cpu")
    assert torch.equal(moved.x, val.x) and torch.equal(moved.y, val.y) and len(moved) == len(val)


def test_epoch_orders_are_reproducible_permutations():
    a, b = epoch_orders(10, 2, 5), epoch_orders(10, 2, 5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert sorted(a[0].tolist()) == list(range(10)) and not torch.equal(a[0], a[1])


def test_shipped_file_is_what_scikit_learn_loads():
    from sklearn.datasets import load_digits

    pixels, labels = read_shipped_digits()
    bunch = load_digits()
    assert (pixels == bunch.data).all() and (labels == bunch.target).all()
