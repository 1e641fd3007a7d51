"""The fast path (anil.fast) and evaluation (anil.evaluation) against the reference
(anil.algorithm).

Every strategy, memory format and head loop (torch.func, closed form) must give the reference
meta-gradient in float64 to ~1e-10, and evaluation must give the same accuracies.
"""

import pytest
import torch
from torch import nn
from torch.func import vmap

from anil.algorithm import meta_loss, meta_train_step, task_loss
from anil.data import load_split
from anil.evaluation import evaluate, task_accuracies
from anil.fast import (HEAD_LOOPS, Speed, batched_features, default_speed, feature_extractor,
                       head_gradients, meta_gradient, train_step)
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
SPEEDS = [Speed(s.strategy, s.chunk_size, s.batch_body, s.precision, s.channels_last, loop)
          for s in SPEEDS for loop in HEAD_LOOPS]


class OtherHead(nn.Linear):
    """A head that is not exactly nn.Linear: only the torch.func head loop may adapt it."""


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
    loss, acc = meta_gradient(body, head, images, labels, alpha, steps, first_order, speed)
    for e, g in zip(expected, gradients(body, head)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert abs(loss - ref_loss.item()) < 1e-12
    assert abs(acc - ref_acc.item()) < 1e-6  # the reference counts accuracy in float32


@pytest.mark.parametrize("first_order", [False, True])
def test_torch_func_head_loop_adapts_any_head(first_order):
    body, head, images, labels = problem(seed=1, head_cls=OtherHead)
    expected = reference_gradients(body, head, images, labels, 0.5, 2, first_order)
    body.zero_grad(set_to_none=True), head.zero_grad(set_to_none=True)
    meta_gradient(body, head, images, labels, 0.5, 2, first_order, Speed("chunk", 3))
    for e, g in zip(expected, gradients(body, head)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="derived for nn.Linear heads, not OtherHead"):
        meta_gradient(body, head, images, labels, 0.5, 2, first_order,
                      Speed(head_loop="closed-form"))


@pytest.mark.parametrize("first_order", [False, True])
def test_closed_form_head_loop_equals_torch_func_head_loop(first_order):
    """∂L/∂w, ∂L/∂Z, losses and accuracies of the closed form against vmap ∘ grad ∘
    functional_call: two independent derivations of the same head loop."""
    torch.manual_seed(2)
    head = make_head(7, 4)
    params = {k: v.detach() + 0.2 * torch.randn_like(v) for k, v in head.named_parameters()}
    features = torch.randn(3, 16, 7)
    labels = torch.arange(4).repeat_interleave(4).repeat(3, 1)
    closed = head_gradients(head, params, features, labels, 0.7, 4, first_order, scale=0.3,
                            head_loop="closed-form")
    func = head_gradients(head, params, features, labels, 0.7, 4, first_order, scale=0.3,
                          head_loop="torch.func")
    for k in params:
        torch.testing.assert_close(closed[0][k], func[0][k], rtol=1e-12, atol=1e-14)
    for a, b in zip(closed[1:], func[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert closed[1].abs().max() > 1e-3  # ∂L/∂Z is not trivially zero


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
        fast = train_step(body2, head2, opt2, images, labels, 0.4, 2, speed=speed,
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
    meta_gradient(body, head, images, labels, 0.4, 2, speed=Speed("task", precision="bfloat16"))
    got = gradients(body, head)
    assert all(g.dtype == torch.float32 for g in got)
    error = torch.cat([(g - e).flatten() for g, e in zip(got, expected)]).norm()
    size = torch.cat([e.flatten() for e in expected]).norm()
    assert 0 < error / size < 0.05, f"relative error {error / size:.3g}"  # rounded, but close


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


def test_bad_speed_options_are_rejected():
    with pytest.raises(ValueError, match="strategy must be one of"):
        Speed("fastest")
    with pytest.raises(ValueError, match="precision must be one of"):
        Speed(precision="float16")
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        Speed("chunk", chunk_size=0)
    with pytest.raises(ValueError, match="head_loop must be one of"):
        Speed(head_loop="numpy")
