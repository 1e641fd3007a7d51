import numpy as np
import pytest
import torch

from anil.data import ClassSplit
from anil.sampler import SamplerError, TaskSampler, support_query


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
def test_a_task_is_n_classes_of_2k_images_in_class_blocks_labelled_0_to_n_minus_1(ways, shots):
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


def test_a_batch_stacks_tasks_as_float_images_in_0_1():
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


def test_impossible_settings_are_refused_saying_what_to_change():
    split = make_split(num_classes=6, per_class=5, name="toy/train")
    with pytest.raises(SamplerError, match="6-way tasks need 6 classes|7-way tasks need 7 classes"):
        TaskSampler(split, 7, 1)
    with pytest.raises(SamplerError, match=r"2x3=6 images per class.*; use shots=2 or fewer"):
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


# ------------------------------------------------------------------- randomness of the tasks
# Each statistical test below draws from a fixed seed; the bound it asserts would be crossed by
# a correct sampler with the probability stated (chi-square tails and exact binomial tails from
# test_statistics.py), while the bug it targets crosses it by orders of magnitude.

from itertools import permutations  # noqa: E402

from anil.sampler import split_seed  # noqa: E402
from test_statistics import binomial_bounds, chi2_sf, chi2_statistic  # noqa: E402


def random_split(num_classes, per_class, shape=(5, 6, 3), seed=0):
    """Random pixels (no image equals another or any rotation of itself) in class blocks."""
    images = np.random.default_rng(seed).integers(0, 256, (num_classes * per_class, *shape), dtype=np.uint8)
    return ClassSplit.from_labels(images, np.repeat(np.arange(num_classes), per_class),
                                  [f"c{i}" for i in range(num_classes)])


def test_support_and_query_split_each_class_block_into_even_and_odd_positions():
    sampler = TaskSampler(make_split(), 4, 3, seed=2)
    for task_id in range(10):
        task = sampler.task(task_id)
        classes, instances, _ = decode(task)
        (sx, sy), (qx, qy) = task.support, task.query
        assert torch.equal(sx, task.images[0::2]) and torch.equal(qx, task.images[1::2])
        assert torch.equal(sy, task.labels[0::2]) and torch.equal(qy, task.labels[1::2])
        support = set(zip(classes[0::2], instances[0::2]))
        query = set(zip(classes[1::2], instances[1::2]))
        assert len(support) == len(query) == 4 * 3 and not support & query


def test_images_are_the_stored_pixels_scaled_to_the_unit_interval():
    """images[i] = stored[indices[i]] / 255 in channels-first layout, exactly."""
    split = random_split(6, 4)
    sampler = TaskSampler(split, 3, 2, seed=1)
    for task_id in range(5):
        indices, _, _ = sampler.task_indices(task_id)
        expected = torch.from_numpy(split.images[indices]).permute(0, 3, 1, 2).double() / 255
        images = sampler.task(task_id).images
        assert images.shape == (12, 3, 5, 6)
        assert torch.equal(images.double(), expected.float().double())


def test_labels_take_every_order_of_the_chosen_classes_uniformly():
    """Label j goes to the class of rank r_j among the task's chosen classes; (r_0, r_1, r_2) must
    be a uniform random permutation per task, so over 1800 3-way tasks each of the 3! = 6 orders
    appears about 300 times. Chi-square with 5 dof; a correct sampler fails with p = 1e-6. One
    permutation shared by all tasks puts all 1800 tasks in one cell."""
    sampler = TaskSampler(make_split(), 3, 1, seed=11)
    orders = list(permutations(range(3)))
    counts = np.zeros(len(orders))
    for task_id in range(1800):
        classes = sampler.task(task_id).classes
        counts[orders.index(tuple(np.argsort(np.argsort(classes))))] += 1
    assert chi2_sf(chi2_statistic(counts, 1800 / 6), 5) > 1e-6, counts


def test_task_is_the_documented_function_of_seed_and_task_id():
    """The task stream is part of every reported number (evaluation uses tasks 0..n-1 of a seed),
    so it follows the procedure the module documents: from default_rng([seed, 0, task_id]), draw
    N distinct eligible classes (sorted), then a permutation ``label_of`` (the i-th smallest chosen
    class gets label label_of[i]), then 2K distinct images per class in label order, then one
    rotation per class."""
    split = make_split(num_classes=9, per_class=7)
    ways, shots, seed = 4, 2, 5
    sampler = TaskSampler(split, ways, shots, seed=seed, rotate=True)
    for task_id in range(20):
        rng = np.random.default_rng([seed, 0, task_id])
        chosen = np.sort(rng.choice(np.arange(9), ways, replace=False))
        label_of = rng.permutation(ways)
        classes = np.empty(ways, int)
        for i in range(ways):
            classes[label_of[i]] = chosen[i]
        picks = [rng.choice(7, 2 * shots, replace=False) for _ in classes]
        rotations = rng.integers(0, 4, ways)
        indices, got_classes, got_rotations = sampler.task_indices(task_id)
        assert got_classes.tolist() == classes.tolist()
        assert indices.tolist() == [7 * c + p for c, ps in zip(classes, picks) for p in ps]
        assert got_rotations.tolist() == rotations.tolist()


def applied_rotation(plain: torch.Tensor, rotated: torch.Tensor) -> int:
    """The k with rotated == rot90(plain, k); exactly one must fit."""
    fits = [k for k in range(4) if torch.equal(torch.rot90(plain, k, dims=(1, 2)), rotated)]
    assert len(fits) == 1, fits
    return fits[0]


def test_each_class_of_a_task_gets_its_own_uniform_rotation():
    """With rotate=True every class block of a task is rotated by its own k ~ U{0, 1, 2, 3}, the
    same k for all 2K images of the class. The k is read off the returned images (compared with
    the stored, unrotated images), not taken from task_indices. Over 600 4-way tasks:
    * all N classes share one k with probability 4^(1−N) = 1/64 per task, so the count of such
      tasks is Binomial(600, 1/64) (mean 9.4); outside its exact bounds with p ≤ 1e-6. One
      rotation per task puts all 600 there.
    * the 2400 class rotations are uniform over 4 values: chi-square with 3 dof, p = 1e-6."""
    ways, shots, tasks = 4, 2, 600
    split = random_split(10, 2 * shots, shape=(5, 5, 1))
    sampler = TaskSampler(split, ways, shots, seed=3, rotate=True)
    counts, all_equal = np.zeros(4), 0
    for task_id in range(tasks):
        indices, _, reported = sampler.task_indices(task_id)
        plain = torch.from_numpy(split.images[indices]).permute(0, 3, 1, 2).float() / 255
        images = sampler.task(task_id).images
        ks = []
        for j in range(ways):
            block = range(2 * shots * j, 2 * shots * (j + 1))
            per_image = {applied_rotation(plain[i], images[i]) for i in block}
            assert len(per_image) == 1, "one rotation for all images of a class"
            ks.append(per_image.pop())
        assert ks == reported.tolist(), "task_indices reports the rotations applied"
        counts += np.bincount(ks, minlength=4)
        all_equal += len(set(ks)) == 1
    lo, hi = binomial_bounds(tasks, 4.0 ** (1 - ways), 1e-6)
    assert lo <= all_equal <= hi, (all_equal, lo, hi)
    assert chi2_sf(chi2_statistic(counts, tasks * ways / 4), 3) > 1e-6, counts


def test_a_fixed_pool_is_drawn_uniformly_and_independently():
    """num_tasks=M: each draw picks one of the M tasks uniformly at random, independently of the
    draws before. Over 7000 draws from M = 7:
    * the counts of the 7 ids: chi-square with 6 dof, p = 1e-6;
    * in the 3500 disjoint pairs (draw 2i, draw 2i+1) the second equals the first, and the second
      is the first's successor mod M, each with probability 1/M: both counts Binomial(3500, 1/7),
      outside their exact bounds with p ≤ 1e-6 each. Cycling through 0..M−1 (draws % M) gives
      0 repeats and 3500 successors."""
    m, n = 7, 7000
    sampler = TaskSampler(make_split(), 3, 1, seed=4, num_tasks=m)
    ids = np.array([sampler.next_task_id() for _ in range(n)])
    assert ids.min() >= 0 and ids.max() < m
    assert chi2_sf(chi2_statistic(np.bincount(ids, minlength=m), n / m), m - 1) > 1e-6
    first, second = ids[0::2], ids[1::2]
    lo, hi = binomial_bounds(n // 2, 1 / m, 1e-6)
    assert lo <= (second == first).sum() <= hi
    assert lo <= (second == (first + 1) % m).sum() <= hi


def test_every_seed_and_split_has_its_own_task_stream():
    """split_seed is injective over (seed, split): no run's validation tasks are another run's
    training tasks."""
    seeds = {(seed, split): split_seed(seed, split) for seed in range(100) for split in ("train", "val", "test")}
    assert len(set(seeds.values())) == len(seeds)


def test_rotation_of_non_square_images_is_refused_up_front():
    import numpy as np
    from anil.data import ClassSplit
    split = ClassSplit.from_labels(np.zeros((20, 4, 6, 1), np.uint8), np.repeat(np.arange(5), 4),
                                   list("abcde"), name="wide/train")
    with pytest.raises(SamplerError, match=r"need square images; wide/train holds 4x6 images"):
        TaskSampler(split, 2, 1, rotate=True)
    assert TaskSampler(split, 2, 1).task(0).images.shape == (4, 1, 4, 6)  # no rotation: fine


def test_support_query_splits_the_dimension_it_is_given():
    """Even positions along ``dim`` are the support set, odd ones the query set: dim 0 for one
    task, dim 1 for a batch of tasks [b, 2NK, ...], the other dimensions untouched."""
    x = torch.arange(3 * 6 * 2).view(3, 6, 2)
    support, query = support_query(x, dim=1)
    assert torch.equal(support, x[:, 0::2]) and torch.equal(query, x[:, 1::2])
    support, query = support_query(x[1])
    assert torch.equal(support, x[1, 0::2]) and torch.equal(query, x[1, 1::2])
    for task in range(3):  # a batch split along dim 1 is each task split along dim 0
        assert all(torch.equal(a[task], b) for a, b in zip(support_query(x, dim=1), support_query(x[task])))
