"""Batch-norm statistics as a protocol choice (anil.model.BATCH_NORMS; docs/design.md,
"Batch-norm statistics: task, separate, support").

What each mode promises about dependence (support: a query's prediction depends on no other
query; separate: support and query features do not see each other; task: they do), that every
fast-path strategy and head loop gives the readable path's meta-gradient and accuracies in
each mode, and that the readable meta-gradient is the true one (central differences).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anil.algorithm import adapt_head, meta_loss, task_loss
from anil.evaluation import episode_accuracy, task_accuracies
from anil.fast import HEAD_LOOPS, Speed, batched_features, feature_extractor, meta_gradient
from anil.model import BATCH_NORMS, task_features
from anil.paper import maml
from anil.sampler import support_query
from tiny import central_differences, flat_params, tiny_problem

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py

SPEEDS = [Speed(strategy, chunk_size=2, batch_body=batch_body, channels_last=batch_body,
                head_loop=loop)
          for strategy in ("task", "chunk", "vmap") for batch_body in (False, True)
          for loop in HEAD_LOOPS]


def query_logits(body, head, images, labels, batch_norm, alpha=0.5, steps=2):
    """The adapted head's logits for one task's query set, readable path."""
    support_features, query_features = task_features(body, *support_query(images), batch_norm)
    adapted = adapt_head(head, dict(head.named_parameters()), support_features,
                         support_query(labels)[0], alpha, steps)
    return torch.func.functional_call(head, adapted, (query_features,))


def test_support_mode_query_logits_do_not_depend_on_the_other_queries():
    body, head, images, labels = tiny_problem(seed=1, tasks=1)
    x, y = images[0], labels[0]
    support, query = support_query(x)
    full = query_logits(body, head, x, y, "support")
    order = torch.randperm(len(query), generator=torch.Generator().manual_seed(0))
    permuted = torch.cat([support, query[order]]).view(2, -1, *x.shape[1:]).transpose(0, 1)
    permuted = query_logits(body, head, permuted.flatten(0, 1), y, "support")
    torch.testing.assert_close(permuted, full[order], rtol=1e-12, atol=1e-12)
    for j in range(len(query)):  # each query alone: support + one query
        with torch.no_grad():
            s_features, q_features = task_features(body, support, query[j:j + 1], "support")
        adapted = adapt_head(head, dict(head.named_parameters()), s_features,
                             support_query(y)[0], 0.5, 2)
        alone = torch.func.functional_call(head, adapted, (q_features,))
        torch.testing.assert_close(alone[0], full[j], rtol=1e-12, atol=1e-12)
    # The batched body of the fast path keeps the same independence (queries permuted).
    z = batched_features(body, x[None], "support")[0]
    z_permuted = batched_features(body, torch.stack([support, query[order]], 1).flatten(0, 1)[None],
                                  "support")[0]
    torch.testing.assert_close(support_query(z_permuted)[1], support_query(z)[1][order],
                               rtol=1e-12, atol=1e-12)


def test_support_mode_uses_the_support_sets_statistics_for_the_query():
    """An independent oracle: torch's batch norm in eval mode with μ_S, σ²_S as its statistics."""
    body, _, images, _ = tiny_problem(seed=2, tasks=1)
    support, query = support_query(images[0])
    s, q = support, query
    with torch.no_grad():  # eval-mode batch norm takes no gradient through its statistics
        for block in body.blocks:
            s, q = block.conv(s), block.conv(q)
            var, mean = torch.var_mean(s, dim=(0, 2, 3), correction=0)
            s, q = (block.pool(torch.relu(F.batch_norm(t, mean, var, block.norm.weight,
                                                       block.norm.bias, False, 0.0, block.norm.eps)))
                    for t in (s, q))
        got_s, got_q = task_features(body, support, query, "support")
        support_alone = body(support)  # nn.BatchNorm2d on the support set
    torch.testing.assert_close(got_s, s.flatten(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_q, q.flatten(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_s, support_alone, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_norm", BATCH_NORMS)
def test_which_features_see_the_other_set(batch_norm):
    """Change the query images: the support features move only under "task"; change the support
    images: the query features stay put only under "separate"."""
    body, _, images, _ = tiny_problem(seed=3, tasks=1)
    support, query = support_query(images[0])
    with torch.no_grad():
        s0, q0 = task_features(body, support, query, batch_norm)
        s1, _ = task_features(body, support, 3 * query + 1, batch_norm)
        _, q2 = task_features(body, 3 * support + 1, query, batch_norm)
    support_moved = not torch.allclose(s0, s1, rtol=1e-12, atol=1e-12)
    query_moved = not torch.allclose(q0, q2, rtol=1e-12, atol=1e-12)
    assert support_moved == (batch_norm == "task")
    assert query_moved == (batch_norm != "separate")


@pytest.mark.parametrize("batch_norm", BATCH_NORMS)
def test_meta_gradient_matches_finite_differences(batch_norm):
    """∂/∂(θ, w) of (1/B) Σ_i L(Q_i; θ, w_i^(S)), second order, through the batch statistics."""
    body, head, images, labels = tiny_problem(seed=4)
    alpha, steps = 0.5, 2
    loss, _ = meta_loss(body, head, images, labels, alpha, steps, batch_norm=batch_norm)
    analytic = torch.autograd.grad(loss, flat_params(body, head))

    def f():
        with torch.no_grad():
            return meta_loss(body, head, images, labels, alpha, steps, batch_norm=batch_norm)[0].item()

    # As tests/method/test_math.py: central differences with ε = 1e-6 in float64 are exact to
    # ~ε² (truncation) + u/ε ≈ 1e-10 (rounding) relative to the loss.
    for a, n in zip(analytic, central_differences(f, flat_params(body, head))):
        torch.testing.assert_close(a, n, rtol=1e-6, atol=1e-8)


def reference(body, head, images, labels, alpha, steps, first_order, batch_norm):
    body.zero_grad(set_to_none=True), head.zero_grad(set_to_none=True)
    loss, accuracy = meta_loss(body, head, images, labels, alpha, steps, first_order, batch_norm)
    loss.backward()
    grads = [p.grad.clone() for p in flat_params(body, head)]
    body.zero_grad(set_to_none=True), head.zero_grad(set_to_none=True)
    return grads, loss.item(), accuracy.item()


@pytest.mark.parametrize("batch_norm", ["separate", "support"])  # "task": tests/method/test_fast.py
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("speed", SPEEDS, ids=repr)
def test_every_strategy_gives_the_readable_meta_gradient(speed, first_order, batch_norm):
    body, head, images, labels = tiny_problem(seed=5, tasks=5)
    alpha, steps = 0.4, 3
    expected, ref_loss, ref_acc = reference(body, head, images, labels, alpha, steps, first_order,
                                            batch_norm)
    loss, acc = meta_gradient(body, head, images, labels, alpha, steps, first_order, speed,
                              batch_norm=batch_norm)
    for e, g in zip(expected, [p.grad for p in flat_params(body, head)]):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert abs(loss - ref_loss) < 1e-12 and abs(acc - ref_acc) < 1e-6


@pytest.mark.parametrize("batch_norm", BATCH_NORMS)
def test_evaluation_accuracies_agree_with_the_readable_path(batch_norm):
    body, head, images, labels = tiny_problem(seed=6, tasks=4)
    alpha, steps = 0.8, 3
    expected = torch.stack([task_loss(body, head, x, y, alpha, steps, batch_norm=batch_norm)[1]
                            for x, y in zip(images, labels)])
    assert len(set(expected.tolist())) > 1  # the tasks' accuracies differ: a real comparison
    for speed in SPEEDS:
        features_fn = feature_extractor(body, speed, batch_norm=batch_norm)
        got = task_accuracies(body, head, images, labels, alpha, steps, features_fn,
                              speed.head_loop, batch_norm)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for x, y, e in zip(images, labels, expected):
        (s, q), (sy, qy) = support_query(x), support_query(y)
        got = episode_accuracy(body, head, s, sy, q, qy, alpha, steps, batch_norm=batch_norm)
        assert abs(got - e.item()) < 1e-12


@pytest.mark.parametrize("batch_norm", BATCH_NORMS)
def test_maml_restricted_to_the_head_is_anil_in_every_mode(batch_norm):
    body, head, images, labels = tiny_problem(seed=7, tasks=2)
    expected, ref_loss, _ = reference(body, head, images, labels, 0.5, 2, False, batch_norm)
    heads = maml.layer_params(body, head, ["head"])
    loss, _ = maml.meta_loss(body, head, images, labels, 0.5, 2, adapted=heads,
                             batch_norm=batch_norm)
    loss.backward()
    assert abs(loss.item() - ref_loss) < 1e-12
    for e, p in zip(expected, flat_params(body, head)):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-12)


def test_bad_modes_and_mismatches_are_refused_in_one_line():
    body, head, images, labels = tiny_problem(seed=8)
    with pytest.raises(ValueError, match=r"batch_norm must be one of \('task', 'separate', "
                                         r"'support'\), got 'query'"):
        meta_loss(body, head, images, labels, 0.5, 1, batch_norm="query")
    other = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, track_running_stats=False),
                          nn.Flatten())
    with pytest.raises(ValueError, match="anil.model.ConvBody implements; Sequential does not"):
        feature_extractor(other, Speed(), batch_norm="support")
    features_fn = feature_extractor(body, Speed())
    with pytest.raises(ValueError, match="features_fn was made with batch_norm='task' but "
                                         "batch_norm='support' was asked for"):
        meta_gradient(body, head, images, labels, 0.5, 1, features_fn=features_fn,
                      batch_norm="support")
