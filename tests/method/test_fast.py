"""The fast path (anil.fast) and evaluation (anil.evaluation) against the reference
(anil.algorithm).

Every strategy, memory format and head loop (torch.func, closed form) must give the reference
meta-gradient in float64 to ~1e-10, and evaluation must give the same accuracies.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import vmap

from anil.algorithm import adapt_and_score, meta_loss, meta_train_step, task_loss
from anil.data import ClassSplit, load_split
from anil.evaluation import accuracies_of, episode_accuracy, evaluate, task_accuracies
from anil.fast import (HEAD_LOOPS, Speed, batched_features, default_speed, feature_extractor,
                       head_gradients, meta_gradient, train_step)
from anil.model import ConvBody, make_head
from anil.sampler import TaskSampler
from tiny import tiny_problem

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


def bf16_rounding_model(body, head, images, labels, step_size, steps, generator):
    """The float64 meta-gradient with each rounding that bfloat16 autocast does in the body
    replaced by an independent relative error: x -> x (1 + δ), δ ~ U(-u, u), u = 2⁻⁸.

    The points (the autocast of torch's CPU backend): each conv's weights and bias, its output
    and the batch norm's output; the images; backwards, ∂L/∂Z as it enters the body, the
    gradients leaving each batch norm and each conv (but the first, whose input needs none)
    and the conv's weight gradients. ReLU and max-pool are exact on bf16 values; accumulations
    run in float32, whose rounding is 2¹⁶ times finer.
    """
    import copy
    u = 2.0 ** -8

    def jitter(t):
        return t * (1 + u * (2 * torch.rand(t.shape, dtype=t.dtype, generator=generator) - 1))

    def jitter_all(grads):
        return tuple(None if g is None else jitter(g) for g in grads)

    def round_its_gradient(module, inputs, features):  # ∂L/∂Z, cast to bf16 entering the body
        features.register_hook(jitter)

    body = copy.deepcopy(body)
    hooks = [body.register_forward_hook(round_its_gradient)]
    for block in body.blocks:
        with torch.no_grad():
            for p in block.conv.parameters():
                p.copy_(jitter(p))  # the same rounded weights for every task
        for p in block.conv.parameters():
            hooks.append(p.register_hook(jitter))
        for m in (block.conv, block.norm):
            hooks.append(m.register_forward_hook(lambda module, inputs, out: jitter(out)))
            if m is not body.blocks[0].conv:
                hooks.append(m.register_full_backward_hook(
                    lambda module, grad_in, grad_out: jitter_all(grad_in)))
    try:
        return reference_gradients(body, head, jitter(images), labels, step_size, steps, False)
    finally:
        for h in hooks:
            h.remove()


def test_bfloat16_body_approximates_the_float32_meta_gradient():
    """The bfloat16 body's meta-gradient, against what bfloat16 rounding can do to it.

    bfloat16 keeps 8 significant bits: each rounding is x (1 + δ) with |δ| ≤ u = 2⁻⁸. A 4-block
    body rounds at 7 points per block (``bf16_rounding_model`` lists them). How far these errors
    move the meta-gradient G depends on its conditioning κ, ‖ΔG‖/‖G‖ ≈ κ u, and κ is large:
    batch norm makes the loss invariant to the scale of each conv filter, so the filter's
    gradient is orthogonal to it, and relative errors of the weights and activations turn it by
    tens of u (κ from 20 to 95 over 200 random problems of this shape). A fixed multiple of u
    is too tight for some problems and CPUs (the 0.05 this replaces failed at 0.0504 on an
    AVX512-BF16 CPU) or loose for the others.

    1. κ is measured for this very problem: the float64 meta-gradient under 8 draws of the
       rounding model gives their rms relative deviation r ≈ κ u. The model is a little
       pessimistic (uniform δ has rms 0.58 u; round-to-nearest's relative error, significands
       spread evenly in log scale, 0.42 u). A bf16 run is one more draw of nearly this
       distribution on any CPU: all round the same autocast points to nearest, and AVX2's
       emulation, AVX512-BF16, AMX and ARM differ only in float32 accumulation. Over 40
       problems its error was 0.4 r to 1.5 r, single model draws 0.4 r to 1.8 r. Bound: 3 r.
    2. r is about 0.2, so a bug of that size could hide under that bound; the fast path is also
       compared with the reference algorithm (``meta_loss``) run on the same body under the
       same autocast, its body fed the fast path's ∂L/∂Z. Both then round the same values at
       the same points and differ only by float32 rounding, bounded by ε = 2¹⁰ u₃₂ (a 2-step
       inner loop is tens of roundings of sums of at most 20 terms, accumulated over 4 tasks):
       ∂L/∂Z, computed in float32 by other formulas (closed form against ``torch.func``) and
       rounded to bf16, lies within u |∂L/∂Z| + ε ‖∂L/∂Z‖ of the reference's, and the head and
       body gradients within ε (measured over 200 problems: ≤ 7 u₃₂ and ≤ 0.25 u₃₂). A head
       loop run in bf16, a lost 1/B or second-order term fail the head gradients by factors of
       60 to 5·10⁴; a body left in float32 fails the dtype check.
    """
    u, u32 = 2.0 ** -8, 2.0 ** -24
    eps = 2 ** 10 * u32
    alpha, steps, tasks = 0.4, 2, 4
    torch.manual_seed(0)
    body = ConvBody(in_channels=3, image_size=16, hidden=16, depth=4)  # float64 (module fixture)
    head = make_head(body.feature_dim, 5)
    with torch.no_grad():  # non-zero biases so that no term vanishes by symmetry
        head.bias.normal_()
        for block in body.blocks:
            block.norm.bias.normal_(0, 0.3)
    images = torch.randn(tasks, 20, 3, 16, 16) * torch.linspace(0.5, 2.0, tasks).view(-1, 1, 1, 1, 1)
    labels = torch.arange(5).repeat_interleave(4).repeat(tasks, 1)

    def relative(got, expected):
        return (torch.cat([(g.double() - e.double()).flatten() for g, e in zip(got, expected)]).norm()
                / torch.cat([e.double().flatten() for e in expected]).norm()).item()

    # 1. Against float64, within what the rounding model does to this problem.
    exact = reference_gradients(body, head, images, labels, alpha, steps, False)
    generator = torch.Generator().manual_seed(0)
    draws = [relative(bf16_rounding_model(body, head, images, labels, alpha, steps, generator),
                      exact) for _ in range(8)]
    r = (sum(d * d for d in draws) / len(draws)) ** 0.5
    body32, head32, images32 = body.float(), head.float(), images.float()  # (in place)
    speed = Speed("task", precision="bfloat16")
    extract, fast_dz = feature_extractor(body32, speed), []

    def features_fn(x):  # records ∂L/∂Z as it enters the body, one task at a time
        z = extract(x)
        z.register_hook(fast_dz.append)
        return z
    body32.zero_grad(set_to_none=True), head32.zero_grad(set_to_none=True)
    meta_gradient(body32, head32, images32, labels, alpha, steps, speed=speed,
                  features_fn=features_fn)
    got = gradients(body32, head32)
    assert all(g.dtype == torch.float32 for g in got)
    assert all(dz.dtype == torch.bfloat16 for dz in fast_dz)  # the body did run in bf16
    error = relative(got, exact)
    assert error <= 3 * r, f"relative error {error / u:.1f} u, rounding model r = {r / u:.1f} u"

    # 2. Against the reference algorithm on the same bf16 body.
    reference_dz = {}

    def bf16_body(x):
        task = len(reference_dz)
        reference_dz[task] = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = body32(x)
        z.register_hook(lambda g: fast_dz[task].view_as(g))  # the body gets the fast path's ∂L/∂Z
        z = z.float()
        z.register_hook(lambda g: reference_dz.__setitem__(task, g))
        return z
    body32.zero_grad(set_to_none=True), head32.zero_grad(set_to_none=True)
    meta_loss(bf16_body, head32, images32, labels, alpha, steps)[0].backward()
    same = gradients(body32, head32)
    dz = torch.cat(fast_dz).float().flatten()
    dz_reference = torch.cat(list(reference_dz.values())).flatten()
    excess = (dz - dz_reference).abs() - (u * dz_reference.abs() + eps * dz_reference.norm())
    assert excess.max() <= 0, f"∂L/∂Z beyond its bound by {excess.max() / dz_reference.norm():.3g} ‖∂L/∂Z‖"
    n = len(list(body32.parameters()))
    head_difference, body_difference = relative(got[n:], same[n:]), relative(got[:n], same[:n])
    assert head_difference <= eps, f"head gradients differ by {head_difference / u32:.3g} u32"
    assert body_difference <= eps, f"body gradients differ by {body_difference / u32:.3g} u32"


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
