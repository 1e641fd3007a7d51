"""anil.paper.feature_reuse: the numbers explain prints for a MAML model, against computations
written out here (relative change by hand, CKA's defining properties, ANIL's head alone)."""

import pytest
import torch

from anil.algorithm import adapt_head
from anil.paper import maml
from anil.paper.cka import linear_cka
from anil.paper.feature_reuse import feature_reuse, layer_outputs, relative_change
from anil.sampler import support_query
from tiny import tiny_problem


def one_task(seed=0):
    body, head, images, labels = tiny_problem(seed, tasks=1)
    return body, head, images[0], labels[0]


def test_relative_change_is_the_norm_of_the_difference_over_the_norm():
    before = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[4.0]])}
    after = {"a": torch.tensor([3.0, 1.0]), "b": torch.tensor([[4.0]])}
    assert relative_change(after, before, ["a", "b"]) == pytest.approx(1 / 5)  # ‖(0,1,0)‖ / ‖(3,0,4)‖
    assert relative_change(after, before, ["b"]) == 0


def test_each_layer_moves_as_maml_adapt_moves_it_and_cka_compares_its_outputs():
    body, head, images, labels = one_task()
    alpha, steps = 0.4, 3
    result = feature_reuse(body, head, images, labels, alpha, steps)
    params = {k: v.detach() for k, v in maml.network_params(body, head).items()}
    adapted = maml.adapt(body, head, params, images, labels, alpha, steps)
    before = layer_outputs(body, head, params, images)
    after = layer_outputs(body, head, adapted, images)
    assert list(result["maml"]) == ["conv1", "conv2", "head"]
    for layer, row in result["maml"].items():
        keys = maml.layer_params(body, head, [layer])
        delta = sum(((adapted[k] - params[k]) ** 2).sum() for k in keys).sqrt()
        size = sum((params[k] ** 2).sum() for k in keys).sqrt()
        assert row["relative_change"] == pytest.approx((delta / size).item(), rel=1e-12)
        assert row["parameters"] == sum(params[k].numel() for k in keys)
        assert row["cka"] == pytest.approx(linear_cka(before[layer], after[layer]), rel=1e-12)
        assert 0 < row["relative_change"] and 0 < row["cka"] < 1  # MAML moves every layer


def test_no_inner_steps_change_nothing_and_cka_of_identical_features_is_1():
    body, head, images, labels = one_task(seed=1)
    result = feature_reuse(body, head, images, labels, 0.5, 0)
    for row in [*result["maml"].values(), result["anil_head"]]:
        assert row["relative_change"] == 0
        assert row["cka"] == pytest.approx(1, abs=1e-12)


def test_anils_row_is_the_head_alone_adapted_on_fixed_features():
    body, head, images, labels = one_task(seed=2)
    alpha, steps = 0.5, 4
    anil = feature_reuse(body, head, images, labels, alpha, steps)["anil_head"]
    with torch.no_grad():
        z = body(images)
    w = {k: v.detach() for k, v in head.named_parameters()}
    w_m = adapt_head(head, w, support_query(z)[0], support_query(labels)[0], alpha, steps)
    flat = lambda d: torch.cat([d["weight"].reshape(-1), d["bias"]])
    assert anil["relative_change"] == pytest.approx(
        ((flat(w_m) - flat(w)).norm() / flat(w).norm()).item(), rel=1e-12)
    logits = lambda p: z @ p["weight"].T + p["bias"]
    assert anil["cka"] == pytest.approx(linear_cka(logits(w), logits(w_m)), rel=1e-10)
    assert anil["parameters"] == head.weight.numel() + head.bias.numel()
