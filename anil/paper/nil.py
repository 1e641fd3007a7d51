"""NIL, "No Inner Loop" (the paper's §5.1): drop the head at test time and label each query by
its cosine similarity to the support set, weighting the support labels as Matching Networks do.

For a query feature q and support features s_1..s_m with labels y_1..y_m (penultimate layer,
z = f_θ(x)):

    c(q, s_j) = q·s_j / (‖q‖ ‖s_j‖)                       cosine similarity
    a(q, s_j) = exp c(q, s_j) / Σ_j' exp c(q, s_j')         attention over the support set
    p(y = k | q) = Σ_j a(q, s_j) 1[y_j = k]                  predicted label: argmax_k p(y = k | q)

The paper says the support labels are weighted by cosine similarity; the softmax with temperature
1 (Matching Networks' cosine attention) is this project's reading of that, not a formula the
paper states (docs/paper.md lists it among the differences). With one shot per
class the prediction is the support image of highest cosine similarity; with K shots each class
scores Σ_j exp c over its K supports. No parameter is adapted, so NIL works on the body of any
trained model (ANIL, MAML) or an untrained one. The body runs as in ANIL, with the same
``batch_norm`` choice (``anil.model.task_features``; default "task": once on the whole task).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anil.evaluation import mean_ci95
from anil.model import interleaved_task_features
from anil.sampler import support_query


def nil_probabilities(support_features: torch.Tensor, support_labels: torch.Tensor,
                      query_features: torch.Tensor, ways: int) -> torch.Tensor:
    """p(y = k | q) for every query [n_query, ways]; rows sum to 1."""
    cosine = F.normalize(query_features, dim=1) @ F.normalize(support_features, dim=1).T
    attention = torch.softmax(cosine, dim=1)  # a(q, s_j), over the support set
    return attention @ F.one_hot(support_labels, ways).to(attention.dtype)


def task_accuracy(body, images: torch.Tensor, labels: torch.Tensor, batch_norm: str = "task") -> float:
    """NIL's query accuracy on one task (support at even positions, query at odd)."""
    with torch.no_grad():
        (support_features, query_features), (support_labels, query_labels) = (
            support_query(interleaved_task_features(body, images, batch_norm)), support_query(labels))
        ways = int(labels.max()) + 1
        probs = nil_probabilities(support_features, support_labels, query_features, ways)
    return (probs.argmax(1) == query_labels).float().mean().item()


def evaluate(body, sampler, num_tasks: int, device="cpu", batch_norm: str = "task"):
    """NIL accuracy on tasks 0..num_tasks-1 of ``sampler``: (mean, ci95, per-task accuracies)."""
    accuracies = [task_accuracy(body, t.images.to(device), t.labels.to(device), batch_norm)
                  for t in map(sampler.task, range(num_tasks))]
    mean, ci = mean_ci95(accuracies)
    return mean, ci, accuracies
