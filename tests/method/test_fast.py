"""The fast path (anil.fast) against the reference (anil.algorithm): every strategy, memory
format and head loop (torch.func, closed form) gives the reference meta-gradient in float64
to ~1e-10. Evaluation: test_evaluation.py; the bfloat16 body: test_bfloat16.py.
"""

import pytest
import torch
from torch import nn
from torch.func import vmap

from anil.algorithm import meta_loss, meta_train_step
from anil.fast import (HEAD_LOOPS, Speed, batched_features, default_speed, feature_extractor,
                       head_gradients, meta_gradient, train_step)
from anil.model import ConvBody, make_head
from tiny import gradients, reference_gradients, tiny_problem

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
    return tiny_problem(seed, ways, shots, tasks, dtype, head_cls)


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
    closed = assert_head_loops_agree(head, params, features, labels, 4, first_order, scale=0.3)
    assert closed[1].abs().max() > 1e-3  # ∂L/∂Z is not trivially zero


def assert_head_loops_agree(head, params, features, labels, steps, first_order, scale):
    """head_gradients (∂L/∂w, ∂L/∂Z, losses, accuracies) of the closed form and of torch.func,
    equal to float64 rounding; returns the closed form's."""
    closed = head_gradients(head, params, features, labels, 0.7, steps, first_order, scale=scale,
                            head_loop="closed-form")
    func = head_gradients(head, params, features, labels, 0.7, steps, first_order, scale=scale,
                          head_loop="torch.func")
    for k in params:
        torch.testing.assert_close(closed[0][k], func[0][k], rtol=1e-12, atol=1e-14)
    for a, b in zip(closed[1:], func[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    return closed


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


def test_bad_speed_options_are_rejected():
    with pytest.raises(ValueError, match="strategy must be one of"):
        Speed("fastest")
    with pytest.raises(ValueError, match="precision must be one of"):
        Speed(precision="float16")
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        Speed("chunk", chunk_size=0)
    with pytest.raises(ValueError, match="head_loop must be one of"):
        Speed(head_loop="numpy")


def test_float32_precision_runs_the_body_in_float32():
    """precision="float32" is the body itself: no autocast, the features are body(x)."""
    body, _, images, _ = problem(seed=7, dtype=torch.float32)
    expected = torch.stack([body(x) for x in images])
    for speed in (Speed("task"), Speed("vmap", batch_body=True)):
        features = feature_extractor(body, speed)(images)
        assert features.dtype == torch.float32
        # The batched body sums batch-norm statistics in another order: float32 rounding of a
        # few hundred terms per statistic through 4 blocks, ~1e-6 relative, not autocast's 2^-8.
        torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-6)


def test_meta_gradient_accumulates_into_existing_gradients_as_backward_does():
    """Two calls without zeroing in between give twice the meta-gradient, body and head alike
    (as two ``meta_loss(...).backward()`` would)."""
    body, head, images, labels = problem(seed=8)
    expected = reference_gradients(body, head, images, labels, 0.4, 2, False)
    for speed in (Speed("task"), Speed("chunk", 2, head_loop="closed-form")):
        body.zero_grad(set_to_none=True), head.zero_grad(set_to_none=True)
        for _ in range(2):
            meta_gradient(body, head, images, labels, 0.4, 2, speed=speed)
        for e, g in zip(expected, gradients(body, head)):
            torch.testing.assert_close(g, 2 * e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
def test_head_loops_agree_when_support_and_query_labels_differ(first_order):
    """The closed form and torch.func on tasks whose query labels do not repeat the support
    labels (any episode): the inner loop must use the support labels, the score the query's."""
    torch.manual_seed(9)
    head = make_head(6, 4)
    params = {k: v.detach() + 0.2 * torch.randn_like(v) for k, v in head.named_parameters()}
    features = torch.randn(3, 16, 6)
    labels = torch.randint(0, 4, (3, 16))
    assert_head_loops_agree(head, params, features, labels, 3, first_order, scale=0.5)


def test_default_speeds_are_the_documented_ones():
    """default_speed's docstring: on a CPU the body task by task and the head loop over chunks
    of 8 tasks; on a GPU (cuda, mps) the whole meta-batch in one batched body call and one head
    loop; channels-last float32 everywhere, with the head loop asked for."""
    for head_loop in HEAD_LOOPS:
        cpu = default_speed("cpu", head_loop)
        assert (cpu.strategy, cpu.chunk_size, cpu.batch_body, cpu.channels_last, cpu.precision,
                cpu.head_loop) == ("chunk", 8, False, True, "float32", head_loop)
        for device in ("cuda", "mps"):
            gpu = default_speed(device, head_loop)
            assert (gpu.strategy, gpu.batch_body, gpu.channels_last, gpu.precision,
                    gpu.head_loop) == ("vmap", True, True, "float32", head_loop)
