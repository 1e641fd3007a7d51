"""Linear CKA and NIL against independent computations."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from anil.paper.cka import linear_cka
from anil.paper.nil import nil_probabilities, task_accuracy


# ------------------------------------------------------------------------------ linear CKA

def test_cka_of_identical_representations_is_one():
    x = torch.randn(12, 40)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    torch.manual_seed(0)
    x, y = torch.randn(20, 7, dtype=torch.float64), torch.randn(20, 5, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(7, 7, dtype=torch.float64))
    base = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-12)
    assert linear_cka(3.7 * x, 0.01 * y) == pytest.approx(base, abs=1e-12)
    # ... but not to an arbitrary invertible linear map
    a = torch.diag(torch.tensor([10.0, 1, 1, 1, 1, 1, 0.1], dtype=torch.float64))
    assert abs(linear_cka(x @ a, y) - base) > 1e-3


def test_cka_is_symmetric_and_accepts_any_layout():
    torch.manual_seed(1)
    x, y = torch.randn(9, 3, 4, 4), torch.randn(9, 11)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-14)
    assert linear_cka(x, y) == pytest.approx(linear_cka(x.flatten(1), y), abs=1e-14)


def test_cka_hand_worked_example():
    """x = (0, 1, 2), y = (0, 1, 4): centred x̃ = (−1, 0, 1), ỹ = (−5, −2, 7)/3;
    x̃·ỹ = 4, ‖x̃‖² = 2, ‖ỹ‖² = 26/3, so CKA = 4² / (2 · 26/3) = 12/13 (Pearson r²)."""
    x = torch.tensor([[0.0], [1.0], [2.0]])
    y = torch.tensor([[0.0], [1.0], [4.0]])
    assert linear_cka(x, y) == pytest.approx(12 / 13, abs=1e-12)


def test_cka_matches_the_feature_space_formula():
    """‖ỸᵀX̃‖_F² / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F), computed in numpy from the definition."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(15, 6)), rng.normal(size=(15, 4))
    y[:, 0] += 2 * x[:, 0]  # some shared structure
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = (np.linalg.norm(yc.T @ xc) ** 2
                / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, abs=1e-12)


def test_cka_of_independent_representations_is_small():
    torch.manual_seed(3)
    assert linear_cka(torch.randn(2000, 4), torch.randn(2000, 4)) < 0.02


def test_cka_rejects_mismatched_and_constant_inputs():
    with pytest.raises(ValueError, match="same inputs"):
        linear_cka(torch.randn(4, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="constant"):
        linear_cka(torch.ones(4, 2), torch.randn(4, 2))


# ------------------------------------------------------------------------------------- NIL

def test_nil_probabilities_hand_worked():
    """Supports s1 = (1, 0) label 0, s2 = (0, 1) label 1; query q = (1, 1):
    cosines (1/√2, 1/√2) → p = (1/2, 1/2). Query (3, 0): cosines (1, 0) → p0 = e/(e + 1)."""
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    p = nil_probabilities(support, labels, torch.tensor([[1.0, 1.0], [3.0, 0.0]]), 2)
    torch.testing.assert_close(p[0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(p[1], torch.tensor([math.e / (math.e + 1), 1 / (math.e + 1)]))


def test_nil_weights_support_labels_by_softmax_of_cosine():
    """p(y=k|q) = Σ_j a_j 1[y_j = k] against an explicit double loop."""
    torch.manual_seed(4)
    s, y, q = torch.randn(6, 5), torch.tensor([0, 0, 1, 1, 2, 2]), torch.randn(4, 5)
    p = nil_probabilities(s, y, q, 3)
    for i in range(4):
        c = [float(q[i] @ s[j] / (q[i].norm() * s[j].norm())) for j in range(6)]
        a = np.exp(c) / np.exp(c).sum()
        for k in range(3):
            assert p[i, k].item() == pytest.approx(sum(a[j] for j in range(6) if y[j] == k), abs=1e-6)
    torch.testing.assert_close(p.sum(1), torch.ones(4))


class Flatten(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_nil_is_perfect_on_trivially_separable_features():
    """Class k's images are e_k plus small noise: every query is nearest its own class."""
    torch.manual_seed(5)
    ways, shots = 5, 3
    labels = torch.arange(ways).repeat_interleave(2 * shots)
    images = torch.eye(ways)[labels].view(-1, 1, 1, ways) + 0.05 * torch.randn(len(labels), 1, 1, ways)
    assert task_accuracy(Flatten(), images, labels) == 1.0


def test_nil_is_at_chance_on_random_labels():
    """Features unrelated to the labels: mean accuracy over many tasks ≈ 1/N."""
    torch.manual_seed(6)
    ways, shots, tasks = 5, 2, 1500
    accuracies = []
    for _ in range(tasks):
        labels = torch.arange(ways).repeat_interleave(2 * shots)
        images = torch.randn(len(labels), 1, 4, 4)
        accuracies.append(task_accuracy(Flatten(), images, labels))
    mean, se = np.mean(accuracies), np.std(accuracies) / math.sqrt(tasks)
    assert abs(mean - 1 / ways) < 4 * se, (mean, se)


# ------------------------------------------------------------------- per-layer representations

def test_layer_outputs_are_the_network_layer_by_layer():
    from anil.paper import maml
    from anil.paper.analysis import layer_outputs
    from anil.model import ConvBody, make_head
    torch.manual_seed(7)
    body, x = ConvBody(1, 16, hidden=3), torch.randn(6, 1, 16, 16)
    head = make_head(body.feature_dim, 3)
    params = maml.network_params(body, head)
    outputs = layer_outputs(body, head, params, x)
    assert list(outputs) == ["conv1", "conv2", "conv3", "conv4", "head"]
    torch.testing.assert_close(outputs["conv1"], body.blocks[0](x))
    torch.testing.assert_close(outputs["conv4"].flatten(1), body(x))
    torch.testing.assert_close(outputs["head"], maml.network_forward(body, head, params, x))
