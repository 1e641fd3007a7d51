"""MAML (anil.paper.maml) against ANIL (anil.algorithm) and finite differences, in float64."""

import pytest
import torch
import torch.nn.functional as F

from anil import algorithm
from anil.paper import maml
from anil.evaluation import task_accuracies
from tiny import central_differences, flat_params, tiny_problem as small_problem


pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


@pytest.mark.parametrize("steps,first_order", [(1, False), (3, False), (3, True)])
def test_maml_restricted_to_the_head_is_anil(steps, first_order):
    """Same loss and the same meta-gradient (body and head) as anil.algorithm.meta_loss, although
    MAML re-runs the whole network at every inner step and ANIL runs the body once."""
    body, head, images, labels = small_problem(seed=10)
    params = flat_params(body, head)
    head_only = maml.layer_params(body, head, ["head"])
    anil_loss, anil_acc = algorithm.meta_loss(body, head, images, labels, 0.4, steps, first_order)
    maml_loss, maml_acc = maml.meta_loss(body, head, images, labels, 0.4, steps, first_order,
                                         adapted=head_only)
    torch.testing.assert_close(maml_loss, anil_loss, rtol=1e-12, atol=1e-14)
    assert maml_acc == anil_acc
    for a, m in zip(torch.autograd.grad(anil_loss, params), torch.autograd.grad(maml_loss, params)):
        torch.testing.assert_close(m, a, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_meta_gradient_matches_finite_differences(steps):
    body, head, images, labels = small_problem(seed=11)
    alpha = 0.3
    loss, _ = maml.meta_loss(body, head, images, labels, alpha, steps)
    analytic = torch.autograd.grad(loss, flat_params(body, head))

    def f():
        with torch.no_grad():
            return maml.meta_loss(body, head, images, labels, alpha, steps)[0].item()

    numeric = central_differences(f, flat_params(body, head))
    for a, n in zip(analytic, numeric):
        torch.testing.assert_close(a, n, rtol=1e-6, atol=1e-8)


def test_first_order_maml_is_the_query_gradient_at_the_adapted_parameters():
    """First-order MAML: ∂φ'/∂φ = I, so the meta-gradient is ∇_φ' L(Q; φ') at φ' = φ_i^(m)."""
    body, head, images, labels = small_problem(seed=12, tasks=1)
    x, y, alpha, steps = images[0], labels[0], 0.3, 2
    loss, _ = maml.task_loss(body, head, x, y, alpha, steps, first_order=True)
    analytic = torch.autograd.grad(loss, flat_params(body, head))
    start = maml.network_params(body, head)
    adapted = maml.adapt(body, head, start, x, y, alpha, steps)
    adapted = {k: v.detach().requires_grad_() for k, v in adapted.items()}
    query = F.cross_entropy(maml.network_forward(body, head, adapted, x)[1::2], y[1::2])
    expected = torch.autograd.grad(query, list(adapted.values()))
    assert list(adapted) == list(start)  # the same order as flat_params(body, head)
    for a, e in zip(analytic, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-13)
    # and second order differs: the test is not vacuous
    so = torch.autograd.grad(maml.task_loss(body, head, x, y, alpha, steps)[0],
                             flat_params(body, head))
    assert sum((s - a).norm() for s, a in zip(so, analytic)) > 1e-4


def test_inner_step_is_plain_gradient_descent_on_the_support_loss():
    """One step, every parameter: φ' = φ − α ∇_φ L(S; φ), with ∇ by plain torch.autograd."""
    body, head, images, labels = small_problem(seed=13, tasks=1)
    x, y, alpha = images[0], labels[0], 0.2
    params = maml.network_params(body, head)
    support = F.cross_entropy(torch.nn.Sequential(body, head)(x)[0::2], y[0::2])
    g = torch.autograd.grad(support, list(params.values()))
    adapted = maml.adapt(body, head, params, x, y, alpha, 1)
    for (k, p), gk in zip(params.items(), g):
        torch.testing.assert_close(adapted[k], p - alpha * gk)


@pytest.mark.parametrize("frozen", [[], ["conv1"], ["conv1", "conv2"]])
def test_freezing_adapts_only_the_chosen_layers(frozen):
    body, head, images, labels = small_problem(seed=14, tasks=1)
    params = maml.network_params(body, head)
    adapted_layers = [l for l in maml.layer_names(body) if l not in frozen]
    names = maml.layer_params(body, head, adapted_layers)
    out = maml.adapt(body, head, params, images[0], labels[0], 0.3, 2, adapted=names)
    frozen_names = maml.layer_params(body, head, frozen)
    assert set(names) | set(frozen_names) == set(params) and not set(names) & set(frozen_names)
    for k in params:
        if k in frozen_names:
            assert out[k] is params[k]
        else:
            assert not torch.equal(out[k], params[k]), k


def test_head_only_test_time_adaptation_matches_anil_evaluation():
    body, head, images, labels = small_problem(seed=15, ways=4, shots=3, tasks=3)
    anil = task_accuracies(body, head, images, labels, 0.5, 4).tolist()
    head_only = maml.layer_params(body, head, ["head"])
    assert anil == [maml.task_accuracy(body, head, x, y, 0.5, 4, head_only)
                    for x, y in zip(images, labels)]


def test_layer_names_follow_the_blocks_and_unknown_layers_are_refused():
    body, head, _, _ = small_problem()
    assert maml.layer_names(body) == ["conv1", "conv2", "head"]
    assert maml.layer_params(body, head, ["conv2"]) == [
        "body.blocks.1.conv.weight", "body.blocks.1.conv.bias",
        "body.blocks.1.norm.weight", "body.blocks.1.norm.bias"]
    with pytest.raises(ValueError, match="unknown layer 'conv3'"):
        maml.layer_params(body, head, ["conv3"])
