"""The quantities ``python -m anil.explain`` prints, for one task: features, the inner loop
step by step, the query loss and the meta-gradient by layer (the command line, printing and
pictures are in anil/explain.py).

Every number comes from the project's own functions: ``anil.algorithm.head_loss``,
``adapt_head`` (one step at a time), ``adapt_and_score`` and ``task_loss``. Nothing here
re-implements the math; it only calls it and collects what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from anil.algorithm import adapt_and_score, adapt_head, head_loss, task_loss
from anil.feature_plane import feature_plane
from anil.paper.maml import layer_names, layer_params, network_params
from anil.sampler import support_query


def score(head, params, features, labels):
    """L(·; θ, w) = head_loss at the head ``params``, and the accuracy of argmax_k (W z + b)_k."""
    logits = functional_call(head, params, (features,))
    accuracy = (logits.argmax(-1) == labels).to(logits.dtype).mean()
    return head_loss(head, params, features, labels), accuracy


def head_distance(params, start) -> torch.Tensor:
    """‖w^(s) − w^(0)‖: the Euclidean norm of the change of all head parameters (W and b)."""
    return torch.sqrt(sum(((params[k] - start[k]) ** 2).sum() for k in params))


def inner_loop_trace(head, params, support_features, support_labels, query_features,
                     query_labels, step_size: float, steps: int):
    """The inner loop one step at a time, w^(s+1) = adapt_head(w^(s), steps=1), and at every
    s = 0..m the support loss L(S; θ, w^(s)) and accuracy, the query loss L(Q; θ, w^(s)) and
    accuracy, and ‖w^(s) − w^(0)‖. One step m times is ``adapt_head(..., steps=m)``: the same
    update in the same order. Returns (rows, w^(m))."""
    start, rows = params, []
    for s in range(steps + 1):
        if s > 0:
            params = adapt_head(head, params, support_features, support_labels, step_size, steps=1)
        support_loss, support_accuracy = score(head, params, support_features, support_labels)
        query_loss, query_accuracy = score(head, params, query_features, query_labels)
        rows.append({"step": s, "support_loss": support_loss.item(),
                     "support_accuracy": support_accuracy.item(), "query_loss": query_loss.item(),
                     "query_accuracy": query_accuracy.item(),
                     "distance": head_distance(params, start).item()})
    return rows, params


def meta_gradient_by_layer(body, head, images, labels, step_size: float, steps: int) -> dict:
    """The meta-gradient g = ∇_(θ,w) L(Q; θ, w^(m)) of one task, differentiating ``task_loss``
    in second order (through the inner loop, the default) and first order (inner gradients
    treated as constants), grouped by layer: conv1..conv4 (each conv + batch norm) and head.

    Returns {layer: {"parameters", "second", "first", "share"}} and the same for "all", with
    second = ‖g_second‖, first = ‖g_first‖ and share = ‖g_second − g_first‖ / ‖g_second‖: the
    size of the second-order (Hessian-vector) terms g_second − g_first relative to the
    meta-gradient (docs/design.md, "First order"). It exceeds 1 where those terms point against
    the first-order ones. With m = 0 both orders are the same computation and the share is 0."""
    params = network_params(body, head)
    names = list(params)

    def gradient(first_order):
        loss, _ = task_loss(body, head, images, labels, step_size, steps, first_order)
        return dict(zip(names, torch.autograd.grad(loss, [params[k] for k in names])))

    second, first = gradient(False), gradient(True)
    groups = {layer: layer_params(body, head, [layer]) for layer in layer_names(body)}
    groups["all"] = names
    table = {}
    for layer, keys in groups.items():
        g2 = torch.cat([second[k].reshape(-1) for k in keys])
        g1 = torch.cat([first[k].reshape(-1) for k in keys])
        norm = g2.norm().item()
        table[layer] = {"parameters": g2.numel(), "second": norm, "first": g1.norm().item(),
                        "share": (g2 - g1).norm().item() / norm if norm > 0 else float("nan")}
    return table


@dataclass
class Walkthrough:
    """Everything ``walk_through`` computes for one task (floats, and the shapes it saw)."""

    shapes: dict  # name -> shape, for X, y, Z, Z_S, Z_Q
    support_alone_change: float  # ‖f_θ(X_S) − Z_S‖ / ‖Z_S‖, what a separate support call changes
    trace: list  # inner_loop_trace rows, s = 0..m
    query_loss: float  # L(Q; θ, w^(m)) from adapt_and_score
    query_accuracy: float
    gradient: dict  # meta_gradient_by_layer
    plane: object = None  # anil.feature_plane.FeaturePlane: Z, W^(0) and W^(m) in a plane
    reuse: dict | None = None  # anil.paper.feature_reuse, for a MAML-trained network


def walk_through(body, head, images, labels, step_size: float, steps: int) -> Walkthrough:
    """One task through the equations: features, inner loop, query loss, meta-gradient.

    ``images`` [2NK, C, H, W] and ``labels`` [2NK] hold support and query interleaved
    (``anil.sampler.support_query``)."""
    with torch.no_grad():
        features = body(images)  # Z = f_θ(X): one call, batch-norm statistics of the whole task
        support_features, query_features = support_query(features)
        support_labels, query_labels = support_query(labels)
        alone = body(support_query(images)[0])  # the support set in a call of its own
        change = ((alone - support_features).norm() / support_features.norm()).item()
        params = {k: v.detach() for k, v in head.named_parameters()}
        trace, adapted = inner_loop_trace(head, params, support_features, support_labels,
                                          query_features, query_labels, step_size, steps)
        query_loss, query_accuracy = adapt_and_score(head, params, support_features, support_labels,
                                                     query_features, query_labels, step_size, steps)
    shapes = {"X": images.shape, "y": labels.shape, "Z": features.shape,
              "Z_S": support_features.shape, "Z_Q": query_features.shape}
    return Walkthrough(shapes, change, trace, query_loss.item(), query_accuracy.item(),
                       meta_gradient_by_layer(body, head, images, labels, step_size, steps),
                       feature_plane(features, labels, params, adapted))
