"""Meta-testing: adapt the head on each task's support set, score it on the query set, and
report the mean accuracy over tasks with its 95% confidence interval (docs/design.md,
"Evaluation and the confidence interval").

The adaptation is ``anil.algorithm.adapt_and_score``, the one used in training, vmapped over a
group of tasks (``anil.fast.torch_func_head_loop``; or its closed form, opt-in). Nothing here
needs a graph: the body runs under ``torch.inference_mode`` and the head loop under
``torch.no_grad`` (``torch.func.grad`` still computes the inner gradients).

``batch_norm`` (every function here) says which images batch norm takes its statistics from:
"task" (support and query together: a query's prediction depends on the other queries),
"separate" or "support" (``anil.model.task_features``; docs/design.md).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from anil.fast import (HEAD_LOOP_FUNCTIONS, Speed, default_speed, feature_extractor,
                       matching_features)
from anil.model import task_features
from anil.sampler import TaskSampler, support_query


def mean_ci95(values) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval of the mean,

        x̄ ± 1.96 · s / √n,    s² = (1/(n−1)) Σ_j (x_j − x̄)²   (sample variance, ddof = 1).

    With fewer than two values the half-width is undefined (nan)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()) if len(values) else float("nan"), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))


def task_accuracies(body, head, images, labels, step_size: float, steps: int,
                    features_fn=None, head_loop: str = "torch.func",
                    batch_norm: str = "task") -> torch.Tensor:
    """Query accuracy after m inner steps for each of b tasks, images [b, 2NK, C, H, W].

    Each task goes through the body with its own batch-norm statistics (of the images that
    ``batch_norm`` names); the b heads then adapt together in one vmapped head loop."""
    features_fn = matching_features(body, Speed(), features_fn, batch_norm)
    params = {k: v.detach() for k, v in head.named_parameters()}
    with torch.inference_mode():
        features = features_fn(images)
    # Inference tensors cannot enter torch.func transforms; a clone outside inference mode can.
    features = features.to(params["weight"].dtype).clone()
    (support_features, query_features), (support_labels, query_labels) = (
        support_query(features, dim=1), support_query(labels, dim=1))
    with torch.no_grad():
        _, accuracies = HEAD_LOOP_FUNCTIONS[head_loop](head, params, support_features, support_labels,
                                             query_features, query_labels, step_size, steps)
    return accuracies


def episode_accuracy(body, head, support_images, support_labels, query_images, query_labels,
                     step_size: float, steps: int, head_loop: str = "torch.func",
                     batch_norm: str = "task") -> float:
    """Query accuracy of one given episode, with any number of support and query images per
    class (e.g. the Omniglot one-shot runs). Support and query go through the body as
    ``batch_norm`` says ("task": one call, statistics of the whole episode), then
    ``adapt_and_score`` as for any task."""
    params = {k: v.detach() for k, v in head.named_parameters()}
    with torch.no_grad():
        support_features, query_features = (
            z.to(params["weight"].dtype)
            for z in task_features(body, support_images, query_images, batch_norm))
        # A batch of one task, so that both head loops (vmapped torch.func, closed form) apply.
        _, accuracy = HEAD_LOOP_FUNCTIONS[head_loop](head, params, support_features[None], support_labels[None],
                                           query_features[None], query_labels[None], step_size, steps)
    return accuracy.item()


def accuracies_of(body, head, sampler: TaskSampler, task_ids, step_size: float, steps: int,
                  device="cpu", features_fn=None, head_loop: str = "torch.func",
                  tasks_per_call: int = 8, progress=None, batch_norm: str = "task") -> list[float]:
    """Query accuracy of each task in ``task_ids`` (any order, e.g. every P-th task of one
    process), ``tasks_per_call`` tasks at a time. ``progress(done, total)``, if given, is
    called after each group (a progress bar; it may raise to abandon the evaluation)."""
    task_ids = list(task_ids)
    if features_fn is None:  # the measured default, minus channels-last: that would convert the
        # caller's body in place (train.py and evaluate.py own their body and pass theirs)
        features_fn = feature_extractor(body, replace(default_speed(device), channels_last=False),
                                        batch_norm=batch_norm)
    accuracies = []
    for start in range(0, len(task_ids), tasks_per_call):
        tasks = [sampler.task(i) for i in task_ids[start:start + tasks_per_call]]
        images = torch.stack([t.images for t in tasks]).to(device)
        labels = torch.stack([t.labels for t in tasks]).to(device)
        accuracies += task_accuracies(body, head, images, labels, step_size, steps, features_fn,
                                      head_loop, batch_norm).tolist()
        if progress is not None:
            progress(len(accuracies), len(task_ids))
    return accuracies


def evaluate(body, head, sampler: TaskSampler, num_tasks: int, step_size: float, steps: int,
             device="cpu", features_fn=None, head_loop: str = "torch.func",
             tasks_per_call: int = 8, progress=None, batch_norm: str = "task"):
    """Accuracy on tasks 0..num_tasks-1 of ``sampler`` (the same tasks on every call).

    Returns (mean, ci95, per-task accuracies); see ``accuracies_of`` for the options. The body
    and head are left as they were (no layout change): for a channels-last body, pass
    ``features_fn=anil.fast.feature_extractor(body, anil.fast.default_speed(device))``, which
    converts the body's weights in place (as train.py does with the body it owns)."""
    accuracies = accuracies_of(body, head, sampler, range(num_tasks), step_size, steps, device,
                               features_fn, head_loop, tasks_per_call, progress, batch_norm)
    mean, ci = mean_ci95(accuracies)
    return mean, ci, accuracies
