"""ANIL's inner and outer loop, in the paper's notation (docs/design.md, "The inner loop" and
"The outer loop and the meta-gradient").

Task T_i has a support set S_i and a query set Q_i. The body f_θ maps images to features; the
head w = (W, b) maps features to logits W f_θ(x) + b. Only the head adapts in the inner loop:

    w_i^(0) = w,    w_i^(s+1) = w_i^(s) − α ∇_w L(S_i; θ, w_i^(s)),    s = 0..m−1   (m inner steps)

and the outer loop minimises the mean query loss of the adapted heads over a meta-batch:

    (θ, w) ← (θ, w) − β ∇_(θ,w) (1/B) Σ_i L(Q_i; θ, w_i^(m)(θ, w))

The head is applied with ``torch.func.functional_call`` and differentiated with
``torch.func.grad``; because the inner gradients are ordinary differentiable tensors, the outer
``backward()`` flows through every adaptation step (second order). First-order ANIL detaches
each inner gradient (a stop-gradient), which drops the Hessian terms (docs/design.md, "First
order").

"Adapt the head on the support set, score the query set" is ``adapt_head`` then
``score_query``: ``meta_loss`` calls the two per task (so train.py's loop reaches the inner loop
in two calls: ``meta_loss`` → ``adapt_head``), and ``adapt_and_score``, the same two in one
function, is what ``task_loss`` calls, ``anil.fast`` vmaps over the tasks of a group, and
``anil.evaluation`` vmaps at test time.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad

from anil.model import interleaved_task_features
from anil.sampler import support_query

Params = dict[str, torch.Tensor]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(1/n) Σ_j −log softmax(logits_j)[y_j], the mean cross-entropy: ``F.cross_entropy``
    written out, because under ``vmap`` F.cross_entropy runs a Python decomposition of its
    nll_loss (measured ~20% slower for the whole head loop on a CPU)."""
    return -torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).mean()


def head_loss(head: nn.Module, params: Params, features: torch.Tensor, labels: torch.Tensor):
    """L(S; θ, w) = (1/n) Σ_j −log softmax(W z_j + b)[y_j], with z_j = f_θ(x_j) given."""
    logits = functional_call(head, params, (features,))
    return cross_entropy(logits, labels)


def adapt_head(head: nn.Module, params: Params, features: torch.Tensor, labels: torch.Tensor,
               step_size: float, steps: int, first_order: bool = False) -> Params:
    """m steps of w^(s+1) = w^(s) − α ∇_w L(S; θ, w^(s)) on support features and labels.

    Second order (default): the result stays a differentiable function of (θ, w), so the
    meta-gradient includes ∂w^(m)/∂w and ∂w^(m)/∂θ. ``first_order=True`` treats each ∇_w L as a
    constant, so ∂w^(m)/∂w = I and the features' influence through the inner loop is dropped.
    """
    grad_fn = grad(head_loss, argnums=1)  # ∇_w L(S; θ, w), a function of the head's parameters
    for _ in range(steps):
        grads = grad_fn(head, params, features, labels)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        params = {k: params[k] - step_size * grads[k] for k in params}
    return params


def score_query(head: nn.Module, adapted: Params, query_features: torch.Tensor,
                query_labels: torch.Tensor):
    """L(Q; θ, w^(m)) = (1/n) Σ_j −log softmax(W^(m) z_j + b^(m))[y_j] over the query set, and
    the query accuracy of the adapted head."""
    logits = functional_call(head, adapted, (query_features,))
    accuracy = (logits.argmax(-1) == query_labels).to(logits.dtype).mean()
    return cross_entropy(logits, query_labels), accuracy


def adapt_and_score(head: nn.Module, params: Params, support_features: torch.Tensor,
                    support_labels: torch.Tensor, query_features: torch.Tensor,
                    query_labels: torch.Tensor, step_size: float, steps: int,
                    first_order: bool = False):
    """Adapt the head on the support set, score it on the query set: for one task,

        w_i^(m) = adapt_head(w; S_i),    returns  L(Q_i; θ, w_i^(m))  and the query accuracy.

    The features come from the body under one of the batch-norm modes (``task_features``;
    docs/design.md, "Batch-norm statistics: task, separate, support"). Vmap it over a leading task dimension
    to handle many tasks in one call, as ``anil.fast`` and ``anil.evaluation`` do.
    """
    adapted = adapt_head(head, params, support_features, support_labels, step_size, steps,
                         first_order)
    return score_query(head, adapted, query_features, query_labels)


def task_loss(body: nn.Module, head: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              step_size: float, steps: int, first_order: bool = False, batch_norm: str = "task"):
    """L(Q_i; θ, w_i^(m)) for one task, and the query accuracy of the adapted head.

    ``images`` hold support and query interleaved (``anil.sampler.support_query``). Batch norm
    takes its statistics from support and query together (``batch_norm="task"``, one body
    call), from each set alone ("separate") or from the support set ("support");
    ``anil.model.task_features``. The meta-gradient flows through those statistics too.
    """
    support_features, query_features = support_query(
        interleaved_task_features(body, images, batch_norm))
    support_labels, query_labels = support_query(labels)
    return adapt_and_score(head, dict(head.named_parameters()), support_features, support_labels,
                           query_features, query_labels, step_size, steps, first_order)


def meta_loss(body: nn.Module, head: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              step_size: float, steps: int, first_order: bool = False, batch_norm: str = "task"):
    """(1/B) Σ_i L(Q_i; θ, w_i^(m)) over a meta-batch images [B, 2NK, C, H, W], labels [B, 2NK].

    Returns the mean query loss (differentiable w.r.t. body and head) and mean query accuracy.
    Each task is ``task_loss``, written out here so that the inner loop is one call away.
    """
    w = dict(head.named_parameters())
    losses, accuracies = [], []
    for x, y in zip(images, labels):                              # task T_i
        support_features, query_features = support_query(          # Z = f_θ(X); batch-norm
            interleaved_task_features(body, x, batch_norm))        # statistics per batch_norm
        support_labels, query_labels = support_query(y)
        adapted = adapt_head(head, w, support_features, support_labels, step_size, steps,
                             first_order)                         # the inner loop: w_i^(m)
        loss, accuracy = score_query(head, adapted, query_features, query_labels)
        losses.append(loss), accuracies.append(accuracy)
    return torch.stack(losses).mean(), torch.stack(accuracies).mean()


def meta_train_step(body, head, optimizer, images, labels, step_size, steps, first_order=False,
                    average=None, batch_norm="task"):
    """One outer step: Adam (or any optimizer over body and head) on the mean query loss."""
    optimizer.zero_grad(set_to_none=True)
    loss, accuracy = meta_loss(body, head, images, labels, step_size, steps, first_order,
                               batch_norm)
    loss.backward()
    return outer_step(optimizer, loss.detach(), accuracy, average)


def outer_step(optimizer, loss, accuracy, average=None):
    """(θ, w) ← optimizer step on the accumulated ``.grad``; returns (loss, accuracy) as floats.

    ``average`` is for data-parallel training (``anil.run.distributed``): a function that
    averages a list of tensors across processes in place. Each process holds B/P tasks of the
    meta-batch; the mean of their gradients is the gradient of the whole meta-batch's mean loss
    (docs/design.md, "Data-parallel training"), so averaging between ``backward()`` and
    ``step()`` makes every process take the same step. The reported loss and accuracy are
    averaged in the same call.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    loss, accuracy = average_gradients(params, loss, accuracy, average)
    optimizer.step()
    return loss, accuracy


def average_gradients(params, loss, accuracy, average=None) -> tuple[float, float]:
    """∇_(θ,w) ← (1/P) Σ_r ∇_(θ,w)^(r) through ``average`` (a function that averages a list of
    tensors across processes in place; None: nothing to average), with the loss and accuracy in
    the same call. Returns (loss, accuracy) as floats."""
    params = list(params)
    stats = torch.tensor([float(torch.as_tensor(loss).detach()), float(accuracy)],
                         device=params[0].device)  # (the readable path's loss is a graph node)
    if average is not None:
        for p in params:  # every process must send the same tensors, even for an unused parameter
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        average([*(p.grad for p in params), stats])
    loss, accuracy = stats.tolist()
    return loss, accuracy
