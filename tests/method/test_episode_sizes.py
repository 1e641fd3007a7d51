"""``episode_accuracy`` with support and query sets of different sizes (K-shot support, any
number of queries, classes with unequal counts): the head adapts by S plain gradient steps on
the mean cross-entropy over the support set, and the accuracy is over the query set."""

import pytest
import torch
import torch.nn.functional as F

from anil.evaluation import episode_accuracy
from anil.fast import HEAD_LOOPS
from tests.tiny import tiny_problem


def reference_accuracy(body, head, support, support_labels, query, query_labels, alpha, steps):
    """Written out: W, b ← W, b − α ∇ (1/|S|) Σ CE(W f(x) + b, y) over the support set."""
    with torch.no_grad():
        features = body(torch.cat([support, query]))
    fs, fq = features[:len(support)], features[len(support):]
    w = head.weight.detach().clone().requires_grad_()
    b = head.bias.detach().clone().requires_grad_()
    for _ in range(steps):
        gw, gb = torch.autograd.grad(F.cross_entropy(fs @ w.T + b, support_labels), (w, b))
        w, b = w - alpha * gw, b - alpha * gb
    predictions = (fq @ w.T + b).argmax(1)
    return (predictions == query_labels).double().mean().item()


@pytest.mark.parametrize("head_loop", HEAD_LOOPS)
@pytest.mark.parametrize("support_counts,query_counts", [
    ((2, 2, 2), (1, 1, 1)),   # 2-shot support, one query per class
    ((1, 1, 1), (3, 0, 4)),   # one-shot, uneven queries (a class without one)
    ((3, 1, 2), (2, 5, 1)),   # uneven support and queries
])
def test_uneven_episodes_are_scored_over_their_own_queries(head_loop, support_counts,
                                                            query_counts):
    body, head, _, _ = tiny_problem(seed=3, ways=3)
    generator = torch.Generator().manual_seed(sum(support_counts) * 10 + sum(query_counts))
    ys = torch.arange(3).repeat_interleave(torch.tensor(support_counts))
    yq = torch.arange(3).repeat_interleave(torch.tensor(query_counts))
    xs = torch.randn(len(ys), 2, 8, 8, generator=generator, dtype=torch.float64)
    xq = torch.randn(len(yq), 2, 8, 8, generator=generator, dtype=torch.float64)
    # Queries that resemble their class's first support image, so accuracies are not all 0 or 1.
    first = {int(c): xs[ys == c][0] for c in ys.unique()}
    xq = xq * 0.8 + torch.stack([first[int(c)] for c in yq])
    got = episode_accuracy(body, head, xs, ys, xq, yq, 0.5, 5, head_loop)
    expected = reference_accuracy(body, head, xs, ys, xq, yq, 0.5, 5)
    assert got * len(yq) == pytest.approx(round(got * len(yq)), abs=1e-9)  # k of |Q| queries
    assert got == pytest.approx(expected, abs=1e-12)
