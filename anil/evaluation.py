"""Meta-testing: adapt the head on each task's support set, score it on the query set."""

from __future__ import annotations

import math

import numpy as np
import torch

from .algorithm import adapt_head, functional_call
from .sampler import TaskSampler


def mean_ci95(values) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval, 1.96 · std / √n (sample std, ddof=1)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()) if len(values) else float("nan"), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))


def task_accuracy(body, head, images, labels, step_size: float, steps: int) -> float:
    """Query accuracy after S inner steps on the support set. No graph is kept."""
    with torch.no_grad():
        features = body(images)
    params = {k: v.detach() for k, v in head.named_parameters()}
    # torch.func.grad computes its own gradients even under no_grad; no outer graph is built.
    with torch.no_grad():
        adapted = adapt_head(head, params, features[0::2], labels[0::2], step_size, steps)
        logits = functional_call(head, adapted, (features[1::2],))
    return (logits.argmax(1) == labels[1::2]).float().mean().item()


def evaluate(body, head, sampler: TaskSampler, num_tasks: int, step_size: float, steps: int,
             device="cpu", progress=None):
    """Accuracy on tasks 0..num_tasks-1 of ``sampler`` (the same tasks on every call).

    ``progress(done, total)``, if given, is called after every task (a progress bar; it may raise
    to abandon the evaluation). Returns (mean, ci95, per-task accuracies).
    """
    accuracies = []
    for task_id in range(num_tasks):
        task = sampler.task(task_id)
        accuracies.append(task_accuracy(body, head, task.images.to(device), task.labels.to(device),
                                        step_size, steps))
        if progress is not None:
            progress(task_id + 1, num_tasks)
    mean, ci = mean_ci95(accuracies)
    return mean, ci, accuracies
