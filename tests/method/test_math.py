"""The math of docs/design.md (inner loop, meta-gradient, first order) against independent
computations, in float64."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from anil.algorithm import adapt_and_score, adapt_head, cross_entropy, head_loss, meta_loss, task_loss
from anil.model import make_head
from tiny import central_differences, flat_params, tiny_problem as small_problem

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def test_cross_entropy_is_the_mean_negative_log_likelihood():
    """(1/n) Σ_j −log softmax(logits_j)[y_j], computed by hand and by torch's loss."""
    torch.manual_seed(0)
    logits, labels = torch.randn(9, 4) * 3, torch.randint(0, 4, (9,))
    by_hand = -sum(torch.log(torch.exp(l[y]) / torch.exp(l).sum()) for l, y in zip(logits, labels)) / 9
    torch.testing.assert_close(cross_entropy(logits, labels), by_hand, rtol=1e-13, atol=0)
    torch.testing.assert_close(cross_entropy(logits, labels), F.cross_entropy(logits, labels),
                               rtol=1e-14, atol=0)


def test_inner_gradient_matches_its_closed_form():
    """∇_W L = (1/n)(P − Y)ᵀ Z and ∇_b L = (1/n) 1ᵀ(P − Y) for softmax cross-entropy."""
    torch.manual_seed(1)
    n, d, ways = 7, 5, 4
    head = make_head(d, ways).double()
    z = torch.randn(n, d)
    y = torch.randint(0, ways, (n,))
    params = {k: v.detach() + 0.1 * torch.randn_like(v) for k, v in head.named_parameters()}
    g = grad(lambda p: head_loss(head, p, z, y))(params)
    p = torch.softmax(z @ params["weight"].T + params["bias"], dim=1)
    residual = p - F.one_hot(y, ways).double()
    torch.testing.assert_close(g["weight"], residual.T @ z / n, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g["bias"], residual.sum(0) / n, rtol=1e-12, atol=1e-14)


def test_adapt_head_takes_plain_gradient_steps():
    """Two inner steps equal two hand-written closed-form gradient steps."""
    torch.manual_seed(2)
    head = make_head(6, 3).double()
    z, y, alpha = torch.randn(9, 6), torch.randint(0, 3, (9,)), 0.7
    w, b = head.weight.detach().clone(), head.bias.detach().clone()
    for _ in range(2):
        residual = torch.softmax(z @ w.T + b, 1) - F.one_hot(y, 3).double()
        w, b = w - alpha * residual.T @ z / 9, b - alpha * residual.mean(0)
    adapted = adapt_head(head, dict(head.named_parameters()), z, y, alpha, steps=2)
    torch.testing.assert_close(adapted["weight"], w)
    torch.testing.assert_close(adapted["bias"], b)


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_meta_gradient_matches_finite_differences(steps):
    body, head, images, labels = small_problem()
    alpha = 0.4
    loss, _ = meta_loss(body, head, images, labels, alpha, steps)
    analytic = torch.autograd.grad(loss, flat_params(body, head))

    def f():
        with torch.no_grad():
            return meta_loss(body, head, images, labels, alpha, steps)[0].item()

    numeric = central_differences(f, flat_params(body, head))
    for a, n in zip(analytic, numeric):
        torch.testing.assert_close(a, n, rtol=1e-6, atol=1e-8)


def test_first_order_meta_gradient_matches_finite_differences_with_frozen_inner_gradients():
    """First order = the gradient of L(Q; θ, w − α Σ_s g_s) with the inner gradients g_s held
    at their values for the current (θ, w)."""
    body, head, images, labels = small_problem(seed=3)
    alpha, steps = 0.4, 3
    loss, _ = meta_loss(body, head, images, labels, alpha, steps, first_order=True)
    analytic = torch.autograd.grad(loss, flat_params(body, head))

    # The summed inner updates of each task, computed once at the base point.
    with torch.no_grad():
        frozen = []
        for x, y in zip(images, labels):
            z = body(x)
            params = {k: v.clone() for k, v in head.named_parameters()}
            adapted = adapt_head(head, params, z[0::2], y[0::2], alpha, steps)
            frozen.append({k: adapted[k] - params[k] for k in params})

    def f():
        with torch.no_grad():
            losses = []
            for x, y, delta in zip(images, labels, frozen):
                z = body(x)
                w = {k: v + delta[k] for k, v in head.named_parameters()}
                losses.append(F.cross_entropy(functional_call(head, w, (z[1::2],)), y[1::2]))
            return torch.stack(losses).mean().item()

    numeric = central_differences(f, flat_params(body, head))
    for a, n in zip(analytic, numeric):
        torch.testing.assert_close(a, n, rtol=1e-6, atol=1e-8)


def test_first_order_differs_from_second_order_exactly_by_the_hessian_terms():
    """One inner step: w' = w − α g(θ, w), g = ∇_w L(S; θ, w). With v = ∇_w' L(Q; θ, w'),

        second order − first order = −α ∂/∂(θ, w) [g(θ, w) · v]   (v held constant),

    i.e. the Hessian ∂²L_S/∂w² and the mixed ∂²L_S/∂θ∂w applied to v."""
    body, head, images, labels = small_problem(seed=4, tasks=1)
    x, y, alpha = images[0], labels[0], 0.6
    params = flat_params(body, head)
    so = torch.autograd.grad(task_loss(body, head, x, y, alpha, 1)[0], params)
    fo = torch.autograd.grad(task_loss(body, head, x, y, alpha, 1, first_order=True)[0], params)

    # Independent computation of the Hessian terms with plain torch.autograd.
    z = body(x)
    w = dict(head.named_parameters())
    support_loss = F.cross_entropy(F.linear(z[0::2], w["weight"], w["bias"]), y[0::2])
    g = torch.autograd.grad(support_loss, [w["weight"], w["bias"]], create_graph=True)
    w1 = [(w["weight"] - alpha * g[0]).detach().requires_grad_(),
          (w["bias"] - alpha * g[1]).detach().requires_grad_()]
    query_loss = F.cross_entropy(F.linear(z[1::2].detach(), *w1), y[1::2])
    v = torch.autograd.grad(query_loss, w1)
    gv = (g[0] * v[0]).sum() + (g[1] * v[1]).sum()
    hessian_terms = torch.autograd.grad(-alpha * gv, params, allow_unused=True)

    for s, f, h, p in zip(so, fo, hessian_terms, params):
        h = torch.zeros_like(p) if h is None else h
        torch.testing.assert_close(s - f, h, rtol=1e-9, atol=1e-12)
    total = sum(h.norm() for h in hessian_terms if h is not None)
    assert total > 1e-3, "the Hessian terms vanish here, so the test would prove nothing"
    # Both the head (∂²L/∂w²) and the body (∂²L/∂θ∂w) terms are present.
    assert hessian_terms[-2].norm() > 1e-4 and hessian_terms[0].norm() > 1e-4


def test_meta_loss_is_the_mean_of_task_losses():
    body, head, images, labels = small_problem(seed=5, tasks=3)
    loss, _ = meta_loss(body, head, images, labels, 0.3, 2)
    per_task = [task_loss(body, head, x, y, 0.3, 2)[0] for x, y in zip(images, labels)]
    torch.testing.assert_close(loss, torch.stack(per_task).mean())


def test_zero_inner_steps_leave_the_head_unchanged():
    body, head, images, labels = small_problem(seed=6, tasks=1)
    loss, _ = task_loss(body, head, images[0], labels[0], 0.5, 0)
    z = body(images[0])
    expected = F.cross_entropy(head(z[1::2]), labels[0][1::2])
    torch.testing.assert_close(loss, expected)


def test_adapt_and_score_scores_the_adapted_head_on_the_query_set_with_its_own_labels():
    """adapt_and_score = adapt_head on (support features, support labels), then the mean
    cross-entropy and the accuracy of the adapted head on the query features against the query
    labels, which need not follow the support labels' order (e.g. a given episode's queries)."""
    torch.manual_seed(7)
    head = make_head(5, 3).double()
    params = dict(head.named_parameters())
    means = 3 * torch.randn(3, 5)  # features that the adapted head can classify
    ys, yq = torch.arange(3).repeat(4), torch.arange(3).repeat_interleave(4)
    zs, zq = means[ys] + 0.3 * torch.randn(12, 5), means[yq] + 0.3 * torch.randn(12, 5)
    loss, accuracy = adapt_and_score(head, params, zs, ys, zq, yq, 0.5, 3)
    adapted = adapt_head(head, params, zs, ys, 0.5, 3)
    logits = zq @ adapted["weight"].T + adapted["bias"]
    torch.testing.assert_close(loss, F.cross_entropy(logits, yq))
    assert accuracy.item() == (logits.argmax(1) == yq).double().mean().item()
    assert accuracy.item() != (logits.argmax(1) == ys).double().mean().item()  # labels matter here
