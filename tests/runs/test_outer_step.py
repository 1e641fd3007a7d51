"""train.py's loop takes the paper's outer step: at every iteration, Adam steps with exactly
∇_(θ,w) (1/B) Σ_i L(Q_i; θ, w_i^(m)) of that iteration's meta-batch, at the weights of that
moment — gradients zeroed in between, nothing accumulated from earlier steps, no batch skipped.

The run is real (train.py's ``main`` in this process); Adam's ``step`` is wrapped to record
the weights and gradients it is handed, and each is compared with the meta-gradient computed
afresh, outside the loop, on the same weights and the same tasks, by the function that step 3
of the loop names: ``meta_loss(...).backward()`` for --strategy reference, ``fast.meta_gradient``
for the fast path. (That the two functions agree is tests/method/test_fast.py's, in float64: in
float32 they differ by rounding that batch norm amplifies on near-constant channels, measured up
to 1% of a layer's gradient here.) The same operations in the same order give the same bits, so
the comparison is exact up to a few float32 roundings, while the bugs this test is for — a
gradient accumulated over steps, a meta-batch skipped or repeated, a missing backward — change
the gradient by its own size.
"""

import pytest
import torch

from anil import algorithm, fast, train
from anil.data import load_split
from anil.sampler import TaskSampler, split_seed
from in_process import in_process

ITERATIONS, META_BATCH, SEED = 3, 2, 5


@pytest.mark.parametrize("strategy", ["reference", "chunk"])
def test_every_adam_step_uses_the_meta_gradient_of_its_own_meta_batch(strategy, glyph_root,
                                                                      tmp_path, monkeypatch, capsys):
    handed = []
    real_step = torch.optim.Adam.step

    def recording_step(self, *a, **kw):
        params = [p for group in self.param_groups for p in group["params"]]
        handed.append(([p.detach().clone() for p in params], [p.grad.clone() for p in params]))
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    code, _, err = in_process(["--data-root", glyph_root, "--hidden", "8", "--meta-batch", META_BATCH,
                               "--iterations", ITERATIONS, "--seed", SEED, "--strategy", strategy,
                               "--val-every", "0", "--eval-tasks", "2", "--threads", "1",
                               "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert len(handed) == ITERATIONS

    args, _ = train.parse_args(["--data-root", str(glyph_root), "--hidden", "8", "--strategy", strategy])
    body, head = train.build_network(args, "cpu")
    speed, features_fn = train.choose_speed(body, args)
    sampler = TaskSampler(load_split(glyph_root / "glyphs", "train"), args.ways, args.shots,
                          seed=split_seed(SEED, "train"), rotate=args.rotate)
    for weights, grads in handed:
        images, labels = sampler.batch(META_BATCH)  # the loop's meta-batch of this iteration
        with torch.no_grad():
            for p, w in zip([*body.parameters(), *head.parameters()], weights):
                p.copy_(w)
        body.zero_grad(set_to_none=True), head.zero_grad(set_to_none=True)
        inner = dict(step_size=args.inner_lr, steps=args.inner_steps)
        if speed is None:
            algorithm.meta_loss(body, head, images, labels, **inner)[0].backward()
        else:
            fast.meta_gradient(body, head, images, labels, **inner, speed=speed,
                               features_fn=features_fn)
        expected = [p.grad for p in [*body.parameters(), *head.parameters()]]
        scale = torch.cat([e.flatten() for e in expected]).norm()
        for got, e in zip(grads, expected):
            assert (got - e).norm() <= 2 ** 7 * 2 ** -24 * scale  # a few float32 roundings
