"""Evaluation (anil.evaluation) against the readable path (anil.algorithm.task_loss): the same
accuracy per task, every task once and in order, episodes scored as tasks, and the caller's
body left as it was."""

import numpy as np
import pytest
import torch

from anil.algorithm import adapt_and_score, task_loss
from anil.data import ClassSplit, load_split
from anil.evaluation import accuracies_of, episode_accuracy, evaluate, task_accuracies
from anil.fast import HEAD_LOOPS, Speed, default_speed, feature_extractor
from anil.model import ConvBody, make_head
from anil.sampler import TaskSampler
from tiny import tiny_problem

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def problem(seed=0, tasks=5, dtype=torch.float64):
    return tiny_problem(seed, tasks=tasks, dtype=dtype)


def reference_accuracy(body, head, images, labels, alpha, steps):
    """The readable path's query accuracy of one task (anil.algorithm.task_loss)."""
    with torch.no_grad():
        return task_loss(body, head, images, labels, alpha, steps)[1].item()


@pytest.mark.parametrize("head_loop", HEAD_LOOPS)
def test_task_accuracies_equal_per_task_accuracies(head_loop):
    body, head, images, labels = problem(seed=6, tasks=7)
    expected = [reference_accuracy(body, head, x, y, 0.5, 5) for x, y in zip(images, labels)]
    assert len(set(expected)) > 1  # the tasks differ, so a mix-up would show
    for speed in (Speed(), Speed(batch_body=True, channels_last=True)):
        got = task_accuracies(body, head, images, labels, 0.5, 5, feature_extractor(body, speed),
                              head_loop)
        assert got.tolist() == pytest.approx(expected, abs=1e-12)


def test_evaluation_takes_every_task_once_in_order(glyph_root):
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    sampler = TaskSampler(load_split(glyph_root / "glyphs", "test"), 5, 1, seed=1)
    body, head = ConvBody(1, 28), make_head(64, 5)
    body.eval(), head.eval()
    expected = [reference_accuracy(body, head, sampler.task(i).images, sampler.task(i).labels,
                                   0.5, 10) for i in range(30)]
    assert len(set(expected)) > 1
    for speed in (default_speed("cpu"), Speed(batch_body=True)):
        for head_loop in HEAD_LOOPS:
            mean, ci, accuracies = evaluate(body, head, sampler, 30, 0.5, 10,
                                            features_fn=feature_extractor(body, speed),
                                            head_loop=head_loop, tasks_per_call=8)
            # float32 features: a query whose two best logits are within rounding could flip;
            # none does on these tasks, so the accuracies agree exactly.
            assert accuracies == pytest.approx(expected, abs=1e-6)
            assert mean == pytest.approx(sum(expected) / 30)


def small_sampler(ways=3, shots=2, seed=5):
    """Tasks of 2-channel 8×8 images (the shape of ``problem``'s body) from 10 random classes."""
    images = np.random.default_rng(0).integers(0, 256, (60, 8, 8, 2), dtype=np.uint8)
    split = ClassSplit.from_labels(images, np.repeat(np.arange(10), 6), [f"c{i}" for i in range(10)])
    return TaskSampler(split, ways, shots, seed=seed)


def test_accuracies_of_follows_the_task_ids_given_and_reports_progress_per_group():
    """Any order, repeats included, a last group smaller than the others; progress(done, total)
    after each group, ending at the total."""
    body, head, _, _ = problem(seed=9, dtype=torch.float32)
    sampler = small_sampler()
    ids = [5, 0, 9, 3, 3, 7, 1]
    expected = [reference_accuracy(body, head, sampler.task(i).images, sampler.task(i).labels, 0.5, 5)
                for i in ids]
    assert len(set(expected)) > 1  # the tasks differ, so a mix-up would show
    calls = []
    got = accuracies_of(body, head, sampler, ids, 0.5, 5, tasks_per_call=3,
                        progress=lambda done, total: calls.append((done, total)))
    assert got == pytest.approx(expected, abs=1e-6)
    assert calls == [(3, 7), (6, 7), (7, 7)]


@pytest.mark.parametrize("head_loop", HEAD_LOOPS)
def test_an_episode_is_scored_as_the_task_of_the_same_support_and_query(head_loop):
    """episode_accuracy on a task's support and query sets, given separately, equals the task's
    query accuracy: one body call over the whole episode (its batch-norm statistics), adapt on
    the support set, score the query set. The queries are shifted so that batch norm over the
    whole episode and over each half separately give different results."""
    body, head, images, labels = problem(seed=10, tasks=6)
    images = images.clone()
    images[:, 1::2] += 1.5
    params = {k: v.detach() for k, v in head.named_parameters()}
    expected, separate = [], []
    for x, y in zip(images, labels):
        expected.append(reference_accuracy(body, head, x, y, 0.5, 5))
        got = episode_accuracy(body, head, x[0::2], y[0::2], x[1::2], y[1::2], 0.5, 5, head_loop)
        assert got == pytest.approx(expected[-1], abs=1e-12)
        with torch.no_grad():  # what must NOT happen: batch norm over each half on its own
            separate.append(adapt_and_score(head, params, body(x[0::2]), y[0::2], body(x[1::2]),
                                            y[1::2], 0.5, 5)[1].item())
    assert separate != pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("device_default", [True, False])
def test_evaluate_leaves_the_callers_body_layout_alone(device_default):
    """The library's default feature function must not convert the body to channels-last in
    place (its conv weights' strides would change under the caller)."""
    body, head, _, _ = problem(seed=11, dtype=torch.float32)
    strides = {k: v.stride() for k, v in body.state_dict().items()}
    sampler = small_sampler()
    if device_default:
        evaluate(body, head, sampler, 3, 0.5, 2)
    else:
        accuracies_of(body, head, sampler, [0, 1], 0.5, 2, device="cpu")
    assert {k: v.stride() for k, v in body.state_dict().items()} == strides
    feature_extractor(body, Speed(channels_last=True))  # what an explicit speed may do: it shows
    assert {k: v.stride() for k, v in body.state_dict().items()} != strides
