"""MAML: the inner loop adapts any chosen subset of the whole network's parameters (docs/design.md,
"MAML, NIL and CKA").

Write φ = (θ, w) for all parameters of body and head, and φ_A ⊆ φ for the ones the inner loop
adapts (the rest, φ_F, stay at their meta-learned values). For task T_i:

    φ_A,i^(0) = φ_A,    φ_A,i^(s+1) = φ_A,i^(s) − α ∇_φ_A L(S_i; φ_F, φ_A,i^(s)),    s = 0..m−1

and the outer loop minimises (1/B) Σ_i L(Q_i; φ_F, φ_A,i^(m)(φ)) over all of φ.

* MAML: φ_A = φ (every layer adapts); the default here.
* ANIL: φ_A = w (the head only). ``anil.algorithm`` is the fast special case: with θ fixed in the
  inner loop, the body runs once per task instead of once per step. The tests hold this module,
  restricted to the head, to the same meta-gradient as ``anil.algorithm``.
* Freezing at test time (the paper's Table 1): φ_A = the layers after the frozen ones.

Second order by default: the inner gradients from ``torch.func.grad`` are differentiable
tensors, so the outer ``backward()`` flows through every step (Hessian–vector products of the
support loss). ``first_order=True`` detaches each inner gradient (first-order MAML).

Batch norm (``batch_norm``, as in ``anil.algorithm``; ``anil.model.task_features``): under
"task" the whole network runs on the task's support and query images together at every step,
and the loss takes the support positions only, so batch statistics are those of the whole task,
exactly as in ``anil.algorithm`` (which runs the body once on support + query). Under
"separate" and "support" the inner steps run the network on the support images alone (their
own statistics); the query pass runs on the query images alone ("separate": the MAML reference
code's two forward calls) or on support and query with the support's statistics ("support").
The body runs m + 1 times per task (m inner steps, one query pass), which is MAML's extra cost.

Where this differs from the MAML reference code (cbfinn/maml; docs/paper.md lists every
difference): the reference runs support and query through the network in separate calls
(``maml.py``, ``task_metalearn``), so each gets its own batch statistics, where this follows
learn2learn's one call per task; the reference's inner loop adapts only the conv and linear
weights and biases (its ``weights`` dict), while its batch norm (``tf.contrib.layers.batch_norm``
with the default ``scale=False``: a shift, no scale) is learned by the outer loop only, where
``network_params`` here includes batch norm's γ and β; and the reference clips every
meta-gradient entry to [−10, 10] on mini-ImageNet (``tf.clip_by_value``), where nothing is
clipped here.

Parameters are one flat dict with the names of ``network_params``: ``body.<name>`` and
``head.<name>``.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from anil.algorithm import outer_step
from anil.evaluation import mean_ci95
from anil.model import check_batch_norm
from anil.sampler import support_query

Params = dict[str, torch.Tensor]


def network_params(body: nn.Module, head: nn.Module) -> Params:
    """φ = (θ, w) as one dict: ``body.<name>`` for the body, ``head.<name>`` for the head."""
    return {**{f"body.{k}": v for k, v in body.named_parameters()},
            **{f"head.{k}": v for k, v in head.named_parameters()}}


def _sub(params: Params, prefix: str) -> Params:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def network_forward(body: nn.Module, head: nn.Module, params: Params, images: torch.Tensor):
    """logits = W f_θ(x) + b with (θ, w) taken from ``params``; one call holds one task (BN)."""
    features = functional_call(body, _sub(params, "body."), (images,))
    return functional_call(head, _sub(params, "head."), (features,))


def support_logits(body, head, params: Params, images: torch.Tensor, batch_norm: str = "task"):
    """Logits of a task's support set (even positions of ``images``), batch norm as asked:
    "task" runs the network on the whole task; otherwise the support set gives its own
    statistics, so the network runs on it alone."""
    if batch_norm == "task":
        return support_query(network_forward(body, head, params, images))[0]
    return network_forward(body, head, params, support_query(images)[0])


def query_logits(body, head, params: Params, images: torch.Tensor, batch_norm: str = "task"):
    """Logits of a task's query set (odd positions), batch norm over the whole task ("task"),
    the query alone ("separate") or the support set ("support": the body on support then
    query, ``statistics_of`` the support; ``anil.model.ConvBody``)."""
    support, query = support_query(images)
    if batch_norm == "task":
        return support_query(network_forward(body, head, params, images))[1]
    if batch_norm == "separate":
        return network_forward(body, head, params, query)
    features = functional_call(body, _sub(params, "body."), (torch.cat([support, query]),),
                               {"statistics_of": len(support)})
    return functional_call(head, _sub(params, "head."), (features[len(support):],))


def layer_names(body: nn.Module) -> list[str]:
    """The paper's layer names: conv1..conv<depth> (one conv block each) and head."""
    return [f"conv{i + 1}" for i in range(len(body.blocks))] + ["head"]


def layer_params(body: nn.Module, head: nn.Module, layers) -> list[str]:
    """Names in ``network_params`` of the given layers; a conv block's layer holds its conv and
    batch-norm parameters."""
    known = layer_names(body)
    names = []
    for layer in layers:
        if layer not in known:
            raise ValueError(f"unknown layer {layer!r}; layers are {', '.join(known)}")
        prefix = "head." if layer == "head" else f"body.blocks.{int(layer[4:]) - 1}."
        names += [k for k in network_params(body, head) if k.startswith(prefix)]
    return names


def adapt(body: nn.Module, head: nn.Module, params: Params, images: torch.Tensor,
          labels: torch.Tensor, step_size: float, steps: int, first_order: bool = False,
          adapted: list[str] | None = None, batch_norm: str = "task") -> Params:
    """m steps of φ_A ← φ_A − α ∇_φ_A L(S; φ_F, φ_A) on the support set (even positions).

    ``adapted`` names the parameters in φ_A (default: all of them, i.e. MAML). Returns the full
    parameter dict with the adapted entries replaced. Under ``batch_norm="task"`` the network
    runs on all of ``images`` (batch-norm statistics of the whole task), otherwise on the support
    set alone; the loss uses the support only.
    """
    names = list(params) if adapted is None else list(adapted)
    missing = [k for k in names if k not in params]
    if missing:
        raise ValueError(f"cannot adapt unknown parameters {missing}")
    fixed = {k: v for k, v in params.items() if k not in names}
    support_labels, _ = support_query(labels)

    def support_loss(fast):
        logits = support_logits(body, head, {**fixed, **fast}, images, batch_norm)
        return F.cross_entropy(logits, support_labels)

    grad_fn = grad(support_loss)
    fast = {k: params[k] for k in names}
    for _ in range(steps):
        grads = grad_fn(fast)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        fast = {k: fast[k] - step_size * grads[k] for k in fast}
    return {**fixed, **fast}


def task_loss(body, head, images, labels, step_size: float, steps: int, first_order: bool = False,
              adapted: list[str] | None = None, batch_norm: str = "task"):
    """L(Q_i; φ_F, φ_A,i^(m)) for one task, and the query accuracy of the adapted network."""
    check_batch_norm(body, batch_norm)
    params = adapt(body, head, network_params(body, head), images, labels, step_size, steps,
                   first_order, adapted, batch_norm)
    logits = query_logits(body, head, params, images, batch_norm)
    _, query_labels = support_query(labels)
    accuracy = (logits.argmax(1) == query_labels).to(logits.dtype).mean()
    return F.cross_entropy(logits, query_labels), accuracy


def meta_loss(body, head, images, labels, step_size: float, steps: int, first_order: bool = False,
              adapted: list[str] | None = None, batch_norm: str = "task"):
    """(1/B) Σ_i L(Q_i; φ_F, φ_A,i^(m)) over images [B, 2NK, C, H, W], labels [B, 2NK]."""
    losses, accuracies = zip(*(task_loss(body, head, x, y, step_size, steps, first_order, adapted,
                                         batch_norm)
                               for x, y in zip(images, labels)))
    return torch.stack(losses).mean(), torch.stack(accuracies).mean()


def meta_train_step(body, head, optimizer, images, labels, step_size, steps, first_order=False,
                    adapted=None, average=None, batch_norm="task"):
    """One outer step of MAML (or of any inner-loop subset ``adapted``) on a meta-batch; the
    same optimizer step as ANIL's (``anil.algorithm.outer_step``, ``average`` for torchrun)."""
    optimizer.zero_grad(set_to_none=True)
    loss, accuracy = meta_loss(body, head, images, labels, step_size, steps, first_order, adapted,
                               batch_norm)
    loss.backward()
    return outer_step(optimizer, loss.detach(), accuracy, average)


def task_accuracy(body, head, images, labels, step_size: float, steps: int,
                  adapted: list[str] | None = None, batch_norm: str = "task") -> float:
    """Query accuracy after m inner steps on the support set, adapting ``adapted`` (default all).
    No outer graph is kept (``torch.func.grad`` still differentiates the inner loop)."""
    with torch.no_grad():
        return task_loss(body, head, images, labels, step_size, steps, adapted=adapted,
                         batch_norm=batch_norm)[1].item()


def evaluate(body, head, sampler, num_tasks: int, step_size: float, steps: int, device="cpu",
             adapted: list[str] | None = None, batch_norm: str = "task"):
    """Accuracy on tasks 0..num_tasks-1 of ``sampler``: (mean, ci95, per-task accuracies)."""
    accuracies = []
    for task_id in range(num_tasks):
        task = sampler.task(task_id)
        accuracies.append(task_accuracy(body, head, task.images.to(device), task.labels.to(device),
                                        step_size, steps, adapted, batch_norm))
    mean, ci = mean_ci95(accuracies)
    return mean, ci, accuracies
