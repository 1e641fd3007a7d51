"""The fast path (anil.fast) against the reference (anil.algorithm, anil.evaluation).

Every strategy, memory format and head-loop implementation must give the reference
meta-gradient in float64 to ~1e-10, and evaluation must give the same accuracies.
"""

import pytest
import torch
from torch import nn
from torch.func import vmap

from anil.algorithm import meta_loss, meta_train_step
from anil.data import load_split
from anil.evaluation import evaluate, task_accuracy
from anil.fast import (Speed, batch_accuracies, batched_features, default_speed, fast_evaluate,
                       fast_meta_loss_backward, fast_meta_train_step, feature_extractor,
                       head_gradients, head_gradients_func)
from anil.model import ConvBody, make_head
from anil.sampler import TaskSampler

SPEEDS = [
    Speed("task"),
    Speed("chunk", chunk_size=2),                     # 5 tasks: chunks of 2, 2 and 1
    Speed("chunk", chunk_size=2, batch_body=True),
    Speed("vmap"),
    Speed("vmap", batch_body=True),
    Speed("vmap", batch_body=True, channels_last=True),
    Speed("task", channels_last=True),
]


class OtherHead(nn.Linear):
    """A head that is not exactly nn.Linear, so anil.fast takes its generic torch.func path."""


def problem(seed=0, ways=3, shots=2, tasks=5, dtype=torch.float64, head_cls=None):
    torch.manual_seed(seed)
    body = ConvBody(in_channels=2, image_size=8, hidden=3, depth=2).to(dtype)
    head = make_head(body.feature_dim, ways).to(dtype)
    if head_cls is not None:
        other = head_cls(body.feature_dim, ways).to(dtype)
        other.load_state_dict(head.state_dict())
        head = other
    with torch.no_grad():  # non-zero biases so that no term vanishes by symmetry
        head.bias.normal_()
        for block in body.blocks:
            block.norm.bias.normal_(0, 0.3)
    images = torch.randn(tasks, 2 * ways * shots, 2, 8, 8, dtype=dtype)
    labels = torch.arange(ways).repeat_interleave(2 * shots).repeat(tasks, 1)
    # Tasks with different statistics, so per-task batch norm differs from whole-batch.
    images = images * torch.linspace(0.5, 2.0, tasks, dtype=dtype).view(-1, 1, 1, 1, 1)
    return body, head, images, labels


def gradients(body, head):
    return [p.grad.clone() for p in [*body.parameters(), *head.parameters()]]


def reference_gradients(body, head, images, labels, alpha, steps, first_order):
    body.zero_grad(set_to_none=True), head.zero_grad(set_to_none=True)
    meta_loss(body, head, images, labels, alpha, steps, first_order)[0].backward()
    return gradients(body, head)


pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("speed", SPEEDS, ids=repr)
def test_every_strategy_gives_the_reference_meta_gradient(speed, first_order):
    body, head, images, labels = problem()
    alpha, steps = 0.4, 3
    expected = reference_gradients(body, head, images, labels, alpha, steps, first_order)
    ref_loss, ref_acc = meta_loss(body, head, images, labels, alpha, steps, first_order)
    body.zero_grad(set_to_none=True), head.zero_grad(set_to_none=True)
    loss, acc = fast_meta_loss_backward(body, head, images, labels, alpha, steps, first_order, speed)
    for e, g in zip(expected, gradients(body, head)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert abs(loss - ref_loss.item()) < 1e-12
    assert abs(acc - ref_acc.item()) < 1e-6  # the reference counts accuracy in float32


@pytest.mark.parametrize("first_order", [False, True])
def test_generic_torch_func_head_path_gives_the_reference_meta_gradient(first_order):
    body, head, images, labels = problem(seed=1, head_cls=OtherHead)
    expected = reference_gradients(body, head, images, labels, 0.5, 2, first_order)
    body.zero_grad(set_to_none=True), head.zero_grad(set_to_none=True)
    fast_meta_loss_backward(body, head, images, labels, 0.5, 2, first_order, Speed("chunk", 3))
    for e, g in zip(expected, gradients(body, head)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
def test_closed_form_head_loop_equals_torch_func_head_loop(first_order):
    """∂L/∂w, ∂L/∂Z, losses and accuracies of linear_head_loop against adapt_head + vmap + grad."""
    torch.manual_seed(2)
    head = make_head(7, 4)
    params = {k: v.detach() + 0.2 * torch.randn_like(v) for k, v in head.named_parameters()}
    features = torch.randn(3, 16, 7)
    labels = torch.arange(4).repeat_interleave(4).repeat(3, 1)
    fast = head_gradients(head, params, features, labels, 0.7, 4, first_order, scale=0.3)
    ref = head_gradients_func(head, params, features, labels, 0.7, 4, first_order, scale=0.3)
    for k in params:
        torch.testing.assert_close(fast[0][k], ref[0][k], rtol=1e-12, atol=1e-14)
    for a, b in zip(fast[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert fast[1].abs().max() > 1e-3  # ∂L/∂Z is not trivially zero


def test_batched_body_uses_each_tasks_own_batch_norm_statistics():
    body, _, images, _ = problem(seed=3)
    batched = batched_features(body, images)
    one_by_one = torch.stack([body(x) for x in images])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vmap(body)(images), one_by_one, rtol=1e-12, atol=1e-12)
    whole_batch = body(images.flatten(0, 1)).view_as(one_by_one)  # what must NOT happen
    assert (whole_batch - one_by_one).abs().max() > 1e-2


def test_fast_step_equals_reference_step_after_adam():
    body, head, images, labels = problem(seed=4)
    body2, head2 = ConvBody(2, 8, hidden=3, depth=2), make_head(body.feature_dim, 3)
    body2.load_state_dict(body.state_dict()), head2.load_state_dict(head.state_dict())
    opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=1e-2)
    opt2 = torch.optim.Adam([*body2.parameters(), *head2.parameters()], lr=1e-2)
    speed = Speed("chunk", 2, batch_body=True, channels_last=True)
    features_fn = feature_extractor(body2, speed)
    start = [p.detach().clone() for p in body.parameters()]
    for _ in range(2):
        ref = meta_train_step(body, head, opt, images, labels, 0.4, 2)
        fast = fast_meta_train_step(body2, head2, opt2, images, labels, 0.4, 2, speed=speed,
                                    features_fn=features_fn)
        assert abs(ref[0] - fast[0]) < 1e-12
    # atol 1e-9: the conv biases' true gradient is 0 (batch norm cancels them), and Adam turns
    # the ~1e-17 rounding noise in it into steps of lr·g/(|g| + 1e-8) ~ 1e-11.
    for a, b in zip([*body.parameters(), *head.parameters()], [*body2.parameters(), *head2.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-9)
    assert any((a - a0).abs().max() > 1e-3 for a, a0 in zip(body.parameters(), start))  # it moved


def test_bfloat16_body_approximates_the_float32_meta_gradient():
    body, head, images, labels = problem(seed=5, dtype=torch.float32)
    expected = reference_gradients(body, head, images, labels, 0.4, 2, False)
    body.zero_grad(set_to_none=True), head.zero_grad(set_to_none=True)
    fast_meta_loss_backward(body, head, images, labels, 0.4, 2, speed=Speed("task", precision="bfloat16"))
    got = gradients(body, head)
    assert all(g.dtype == torch.float32 for g in got)
    error = torch.cat([(g - e).flatten() for g, e in zip(got, expected)]).norm()
    size = torch.cat([e.flatten() for e in expected]).norm()
    assert 0 < error / size < 0.05, f"relative error {error / size:.3g}"  # rounded, but close


def test_batch_accuracies_equal_per_task_accuracies():
    body, head, images, labels = problem(seed=6, tasks=7)
    expected = [task_accuracy(body, head, x, y, 0.5, 5) for x, y in zip(images, labels)]
    assert len(set(expected)) > 1  # the tasks differ, so a mix-up would show
    for speed in (Speed(), Speed(batch_body=True, channels_last=True)):
        got = batch_accuracies(body, head, images, labels, 0.5, 5, speed)
        assert got.tolist() == pytest.approx(expected, abs=1e-6)
    other_head = OtherHead(body.feature_dim, 3)  # the generic torch.func path
    other_head.load_state_dict(head.state_dict())
    got = batch_accuracies(body, other_head, images, labels, 0.5, 5)
    assert got.tolist() == pytest.approx(expected, abs=1e-6)


def test_fast_evaluate_matches_evaluate_on_glyphs(glyph_root):
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    sampler = TaskSampler(load_split(glyph_root / "glyphs", "test"), 5, 1, seed=1)
    body, head = ConvBody(1, 28), make_head(64, 5)
    mean, ci, accuracies = evaluate(body, head, sampler, 30, 0.5, 10)
    for speed in (default_speed("cpu"), Speed(batch_body=True)):
        fast = fast_evaluate(body, head, sampler, 30, 0.5, 10, speed=speed, tasks_per_call=8)
        assert fast[2] == pytest.approx(accuracies, abs=1e-6)
        assert fast[0] == pytest.approx(mean) and fast[1] == pytest.approx(ci)


def test_bad_speed_options_are_rejected():
    with pytest.raises(ValueError, match="strategy must be one of"):
        Speed("fastest")
    with pytest.raises(ValueError, match="precision must be one of"):
        Speed(precision="float16")
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        Speed("chunk", chunk_size=0)
