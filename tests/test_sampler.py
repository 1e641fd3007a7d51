import numpy as np
import pytest
import torch

from anil.data import ClassSplit
from anil.sampler import SamplerError, TaskSampler


def make_split(num_classes=12, per_class=10, name="toy/train", class_offset=0):
    """Each image stores (class id, instance id, class_offset) in its pixels, so a task's
    images can be traced back to their source."""
    images = np.zeros((num_classes * per_class, 4, 4, 1), np.uint8)
    labels = np.repeat(np.arange(num_classes), per_class)
    images[:, 0, 0, 0] = labels
    images[:, 0, 1, 0] = np.tile(np.arange(per_class), num_classes)
    images[:, 0, 2, 0] = class_offset
    names = [f"c{class_offset + i}" for i in range(num_classes)]
    return ClassSplit.from_labels(images, labels, names, name=name)


def decode(task):
    pix = (task.images[:, 0] * 255).round().long()
    return pix[:, 0, 0].numpy(), pix[:, 0, 1].numpy(), pix[:, 0, 2].numpy()


@pytest.mark.parametrize("ways,shots", [(5, 1), (3, 4), (12, 2)])
def test_task_structure(ways, shots):
    sampler = TaskSampler(make_split(), ways, shots, seed=7)
    for task_id in range(20):
        task = sampler.task(task_id)
        classes, instances, _ = decode(task)
        n = 2 * ways * shots
        assert task.images.shape == (n, 1, 4, 4) and task.labels.shape == (n,)
        # Consecutive class blocks, block j carries label j; labels exactly 0..N-1.
        assert torch.equal(task.labels, torch.arange(ways).repeat_interleave(2 * shots))
        blocks = classes.reshape(ways, 2 * shots)
        assert (blocks == blocks[:, :1]).all(), "each block holds one source class"
        assert len(set(blocks[:, 0])) == ways, "N distinct classes"
        assert np.array_equal(blocks[:, 0], task.classes)
        # Support (even positions) and query (odd) are K each per class and disjoint.
        sx, sy = task.support
        qx, qy = task.query
        assert torch.equal(sy, qy) and (torch.bincount(sy) == shots).all()
        pairs = list(zip(classes, instances))
        assert len(set(pairs)) == n, "2K distinct images per class: support and query disjoint"


def test_labels_are_a_random_permutation_of_the_classes():
    """Which source class gets label 0 varies between tasks (not sorted by class id)."""
    sampler = TaskSampler(make_split(), 5, 1, seed=0)
    orders = [tuple(sampler.task(i).classes) for i in range(50)]
    assert any(list(o) != sorted(o) for o in orders)
    label0 = {o[0] for o in orders}
    assert len(label0) > 5


def test_reproducible_from_seed_and_different_across_seeds():
    split = make_split()
    a, b = TaskSampler(split, 5, 2, seed=3), TaskSampler(split, 5, 2, seed=3)
    c = TaskSampler(split, 5, 2, seed=4)
    for _ in range(5):
        ta, tb, _ = a.next(), b.next(), c.next()
        assert torch.equal(ta.images, tb.images) and torch.equal(ta.labels, tb.labels)
    assert not torch.equal(a.task(0).images, c.task(0).images)
    assert not torch.equal(a.task(0).images, a.task(1).images)


def test_fresh_tasks_versus_fixed_pool():
    split = make_split()
    fresh = TaskSampler(split, 3, 1, seed=0)
    ids = [fresh.next_task_id() for _ in range(30)]
    assert ids == list(range(30))
    pool = TaskSampler(split, 3, 1, seed=0, num_tasks=4)
    ids = [pool.next_task_id() for _ in range(100)]
    assert set(ids) == {0, 1, 2, 3}


def test_state_dict_resumes_the_same_stream():
    sampler = TaskSampler(make_split(), 3, 1, seed=0, num_tasks=50)
    for _ in range(7):
        sampler.next()
    state = sampler.state_dict()
    expected = [sampler.next_task_id() for _ in range(10)]
    other = TaskSampler(make_split(), 3, 1, seed=0, num_tasks=50)
    other.load_state_dict(state)
    assert [other.next_task_id() for _ in range(10)] == expected


def test_no_class_from_another_split():
    train = make_split(8, class_offset=0)
    test = make_split(6, class_offset=100, name="toy/test")
    for split, offset in ((train, 0), (test, 100)):
        sampler = TaskSampler(split, 4, 2, seed=1)
        for i in range(20):
            assert (decode(sampler.task(i))[2] == offset).all()


def test_batch_shapes():
    x, y = TaskSampler(make_split(), 5, 1, seed=0).batch(3)
    assert x.shape == (3, 10, 1, 4, 4) and x.dtype == torch.float32 and y.shape == (3, 10)
    assert 0 <= x.min() and x.max() <= 1


def test_rotation_rotates_each_class_block_by_a_multiple_of_90_degrees():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6 * 4, 5, 5, 1), dtype=np.uint8)
    split = ClassSplit.from_labels(images, np.repeat(np.arange(6), 4), list("abcdef"))
    plain = TaskSampler(split, 3, 2, seed=5, rotate=False)
    rotated = TaskSampler(split, 3, 2, seed=5, rotate=True)
    seen = set()
    for i in range(10):
        a, b = plain.task(i), rotated.task(i)
        _, _, rotations = rotated.task_indices(i)
        for j, k in enumerate(rotations):
            block = slice(4 * j, 4 * j + 4)
            assert torch.equal(torch.rot90(a.images[block], int(k), dims=(2, 3)), b.images[block])
            seen.add(int(k))
    assert seen == {0, 1, 2, 3}


def test_clear_errors():
    split = make_split(num_classes=6, per_class=5, name="toy/train")
    with pytest.raises(SamplerError, match="6-way tasks need 6 classes|7-way tasks need 7 classes"):
        TaskSampler(split, 7, 1)
    with pytest.raises(SamplerError, match=r"2x3=6 images per class.*--shots 2"):
        TaskSampler(split, 2, 3)
    with pytest.raises(SamplerError, match="ways must be a positive integer"):
        TaskSampler(split, 0, 1)
    with pytest.raises(SamplerError, match="shots must be a positive integer"):
        TaskSampler(split, 2, -1)


def test_small_classes_are_skipped_not_fatal():
    """Classes with fewer than 2K images cannot take part; the others still can."""
    images = np.zeros((3 + 10 + 10, 2, 2, 1), np.uint8)
    labels = np.repeat([0, 1, 2], [3, 10, 10])
    split = ClassSplit.from_labels(images, labels, ["small", "b", "c"])
    sampler = TaskSampler(split, 2, 4, seed=0)
    assert all(set(sampler.task(i).classes) == {1, 2} for i in range(5))
