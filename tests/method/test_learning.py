"""Meta-training must learn something that transfers to unseen classes."""

import torch

from anil.algorithm import meta_train_step
from anil.data import load_split
from anil.evaluation import evaluate
from anil.model import ConvBody, make_head
from anil.sampler import TaskSampler


def test_short_meta_training_beats_the_untrained_network_on_held_out_classes(glyph_root):
    torch.manual_seed(0)
    path = glyph_root / "glyphs"
    train = TaskSampler(load_split(path, "train"), 5, 1, seed=0)
    test = TaskSampler(load_split(path, "test"), 5, 1, seed=1)
    body = ConvBody(1, 28)
    head = make_head(body.feature_dim, 5)
    alpha, steps = 0.5, 5
    before, before_ci, _ = evaluate(body, head, test, 300, alpha, 10)
    optimizer = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(120):
        x, y = train.batch(4)
        meta_train_step(body, head, optimizer, x, y, alpha, steps)
    after, after_ci, _ = evaluate(body, head, test, 300, alpha, 10)
    print(f"untrained {before:.3f} ± {before_ci:.3f}, trained {after:.3f} ± {after_ci:.3f}")
    assert before < 0.8, "the built-in dataset must not be solved by a random network"
    assert after > before + 0.08 and after - after_ci > before + before_ci
