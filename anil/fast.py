"""The fast path: the same meta-gradient and accuracies as ``anil.algorithm``, computed faster.

``anil.algorithm`` is the readable reference: per task, the body's features flow through the
differentiable inner loop and one ``backward()`` reaches θ through every adaptation step. This
module uses DESIGN §1's observation that θ enters the meta-loss only through the features
Z = f_θ(X):

    ∂L/∂θ = (∂L/∂Z)(∂Z/∂θ),      L = (1/B) Σ_i L(Q_i; θ, w_i^(S)(θ, w))

where ∂L/∂Z already carries every second-order head term. So a step is

    1. Z = f_θ(X)                          body forward (ordinary autograd graph)
    2. Ẑ = stopgrad(Z)                      the head loop sees a detached copy
    3. ∂L/∂w, ∂L/∂Ẑ                         differentiable inner loop over a group of tasks
    4. Z.backward(∂L/∂Ẑ)                    one first-order backward through the body

and the body is a plain module again: channels-last, bfloat16 autocast and ``torch.compile``
apply to it as to a supervised network. The head loop runs in the model's dtype (float32), so
mixed precision touches only the body. For the linear head, step 3 uses the closed-form inner
gradient (``linear_head_loop``, batched over tasks, ordinary autograd); any other head uses
the reference ``adapt_head`` under ``torch.func.vmap`` and ``torch.func.grad``.

Execution strategies over a meta-batch of B tasks (the same meta-gradient, tested):

    task    one task at a time: body on its 2NK images, head loop, backward (least memory:
            one task's activations alive, as in the reference)
    chunk   c tasks share one head-loop call and one backward
    vmap    all B tasks at once (chunk with c = B)

and, independently, ``batch_body``: run the body once over all tasks of a group, batch norm
still using each task's own statistics (``batched_features``), instead of once per task. On a
CPU small per-task batches are faster; on a GPU one large call is.

Evaluation (``fast_evaluate``) runs the body under ``torch.inference_mode`` and adapts the
heads of many tasks together with plain (non-differentiable) gradients.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .algorithm import adapt_head, outer_step
from .evaluation import mean_ci95
from .model import ConvBody

STRATEGIES = ("task", "chunk", "vmap")
PRECISIONS = ("float32", "bfloat16")


@dataclass
class Speed:
    """How to execute a step; none of these change the math (bfloat16 changes rounding).

    strategy       "task", "chunk" or "vmap": how many tasks share one head-loop call and one
                   body backward (1, ``chunk_size`` or all B; see the module docstring)
    batch_body     run the body once over all tasks of a group (per-task batch norm, see
                   ``batched_features``) instead of once per task; GPUs want this, CPUs do not
    precision      "float32", or "bfloat16" autocast of the body only
    channels_last  channels-last memory format for the conv body (inputs and weights)
    """

    strategy: str = "task"
    chunk_size: int = 4
    batch_body: bool = False
    precision: str = "float32"
    channels_last: bool = False

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {self.chunk_size}")

    def tasks_per_call(self, meta_batch: int) -> int:
        return {"task": 1, "chunk": min(self.chunk_size, meta_batch), "vmap": meta_batch}[self.strategy]


def default_speed(device) -> Speed:
    """Measured defaults (README "Speed"). CPU: task by task in channels-last float32 (small
    batches stay in cache; as fast as chunks here, with the reference's peak memory). GPU: all
    tasks in one body call and one batched head loop."""
    if torch.device(device).type == "cuda":
        return Speed(strategy="vmap", batch_body=True, channels_last=True)
    return Speed(strategy="task", channels_last=True)


def _per_task_batch_norm(x: torch.Tensor, tasks: int, norm: nn.BatchNorm2d) -> torch.Tensor:
    """BatchNorm2d with each task's own batch statistics, x [tasks·m, C, H, W]:

        y = γ (x − μ_t) / √(σ²_t + ε) + β,   μ_t, σ²_t over the m images (and H, W) of task t

    written as y = x·s + (β − μ_t·s), s = γ / √(σ²_t + ε), on a [tasks, m, C, H, W] view (no
    copy, any memory format). torch.func.vmap of BatchNorm2d computes the same thing but moves
    the task dimension into the channels with copies (measured about 3× slower on a CPU).
    """
    x5 = x.view(tasks, -1, *x.shape[1:])
    var, mean = torch.var_mean(x5, dim=(1, 3, 4), correction=0, keepdim=True)
    scale = norm.weight.view(1, 1, -1, 1, 1) * torch.rsqrt(var + norm.eps)
    return (x5 * scale + (norm.bias.view(1, 1, -1, 1, 1) - mean * scale)).reshape(x.shape)


def batched_features(body: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """f_θ applied to each task of images [b, m, C, H, W] in one call → [b, m, D].

    Batch norm must see one task at a time (DESIGN §1). For the ConvBody the convolutions run
    on all b·m images at once and batch norm uses per-task statistics; any other body is
    vmapped over tasks (BatchNorm2d(track_running_stats=False) then keeps per-task statistics).
    """
    b = images.shape[0]
    if isinstance(body, ConvBody) and all(isinstance(k.norm, nn.BatchNorm2d) and
                                          not k.norm.track_running_stats for k in body.blocks):
        x = images.flatten(0, 1)
        for block in body.blocks:
            x = block.pool(torch.relu(_per_task_batch_norm(block.conv(x), b, block.norm)))
        return x.flatten(1).view(b, images.shape[1], -1)
    return vmap(body)(images)


def feature_extractor(body: nn.Module, speed: Speed, compile: bool = False):
    """The function Z = f_θ(X), images [b, m, C, H, W] → features [b, m, D], that a speed asks
    for. Puts the body's weights in channels-last when asked; ``compile=True`` wraps the body
    call in ``torch.compile`` (it shares the body's parameters)."""
    if speed.channels_last:
        body.to(memory_format=torch.channels_last)
    call = partial(batched_features, body) if speed.batch_body else body
    if compile:
        call = torch.compile(call)

    # The images stay NCHW: a convolution with channels-last weights returns channels-last
    # activations from the first layer on, and converting the input too would only add a copy
    # (measured: 0.6 MB more peak memory per 5-way 5-shot 32×32×3 task, no speed gained).
    def features(images: torch.Tensor) -> torch.Tensor:
        with _autocast(images, speed.precision):
            return call(images) if speed.batch_body else torch.stack([call(x) for x in images])
    return features


def _autocast(images: torch.Tensor, precision: str):
    if precision == "bfloat16":
        return torch.autocast(images.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _query_loss_and_accuracy(head, params, features, labels, step_size, steps, first_order):
    """L(Q_i; θ, w_i^(S)) of one task from its features [2NK, D] (support at even positions)."""
    adapted = adapt_head(head, params, features[0::2], labels[0::2], step_size, steps, first_order)
    logits = functional_call(head, adapted, (features[1::2],))
    query_labels = labels[1::2]
    accuracy = (logits.argmax(1) == query_labels).to(logits.dtype).mean()
    return F.cross_entropy(logits, query_labels), accuracy


def linear_head_loop(weight, bias, features, labels, step_size: float, steps: int,
                     first_order: bool = False):
    """The inner loop and query loss of b tasks at once, for the linear head, in closed form.

    With support features Z_s [n, D], one-hot labels Y, P = softmax(Z_s Wᵀ + b) (DESIGN §1):

        W^(s+1) = W^(s) − α (1/n)(P − Y)ᵀ Z_s,     b^(s+1) = b^(s) − α (1/n) 1ᵀ(P − Y)

    This is exactly ∇_w L of ``adapt_head`` (tested), written with batched matrix products, so
    ordinary autograd differentiates through it (second order) without ``torch.func``'s
    per-operation overhead. ``first_order`` detaches each step's gradient, as ``adapt_head``.
    features [b, 2NK, D], labels [b, 2NK]; returns query losses [b] and accuracies [b].
    """
    tasks, ways = features.shape[0], weight.shape[0]
    support, query = features[:, 0::2], features[:, 1::2]
    one_hot = F.one_hot(labels[:, 0::2], ways).to(features.dtype)
    w = weight.expand(tasks, *weight.shape)                          # [b, N, D]
    b = bias.expand(tasks, 1, ways)                                  # [b, 1, N]
    for _ in range(steps):
        residual = (torch.softmax(torch.baddbmm(b, support, w.mT), -1) - one_hot) / support.shape[1]
        grad_w, grad_b = residual.mT @ support, residual.sum(1, keepdim=True)
        if first_order:
            grad_w, grad_b = grad_w.detach(), grad_b.detach()
        w, b = w - step_size * grad_w, b - step_size * grad_b
    logits = torch.baddbmm(b, query, w.mT)                           # [b, q, N]
    query_labels = labels[:, 1::2]
    losses = F.cross_entropy(logits.flatten(0, 1), query_labels.flatten(), reduction="none")
    accuracies = (logits.argmax(-1) == query_labels).to(logits.dtype).mean(1)
    return losses.view(tasks, -1).mean(1), accuracies


def head_gradients(head: nn.Module, params, features, labels, step_size: float, steps: int,
                   first_order: bool = False, scale: float = 1.0):
    """∂L/∂w and ∂L/∂Z of L = scale · Σ_i L(Q_i; θ, w_i^(S)) over a group of tasks.

    ``features`` [b, 2NK, D] are treated as inputs (the caller detached them from the body).
    A linear head uses ``linear_head_loop`` (closed-form inner gradients, plain autograd); any
    other head the reference ``adapt_head`` vmapped over the b tasks and differentiated with
    ``torch.func.grad``. Both are second order unless ``first_order``.
    Returns (∂L/∂w dict, ∂L/∂Z [b, 2NK, D], query losses [b], query accuracies [b]).
    """
    if type(head) is nn.Linear:
        with torch.enable_grad():
            w = params["weight"].detach().requires_grad_()
            b = params["bias"].detach().requires_grad_()
            z = features.detach().requires_grad_()
            losses, accuracies = linear_head_loop(w, b, z, labels, step_size, steps, first_order)
            grad_w, grad_b, grad_z = torch.autograd.grad(scale * losses.sum(), (w, b, z))
        return {"weight": grad_w, "bias": grad_b}, grad_z, losses.detach(), accuracies
    return head_gradients_func(head, params, features, labels, step_size, steps, first_order, scale)


def head_gradients_func(head: nn.Module, params, features, labels, step_size: float, steps: int,
                        first_order: bool = False, scale: float = 1.0):
    """``head_gradients`` for any head: ``adapt_head`` vmapped over tasks, ``torch.func.grad``."""
    per_task = vmap(_query_loss_and_accuracy, in_dims=(None, None, 0, 0, None, None, None))

    def loss(params, features):
        losses, accuracies = per_task(head, params, features, labels, step_size, steps, first_order)
        return scale * losses.sum(), (losses, accuracies)

    (grad_params, grad_features), (losses, accuracies) = grad(loss, argnums=(0, 1), has_aux=True)(
        params, features)
    return grad_params, grad_features, losses, accuracies


def fast_meta_loss_backward(body, head, images, labels, step_size: float, steps: int,
                            first_order: bool = False, speed: Speed | None = None,
                            features_fn=None):
    """Accumulate ∇_(θ,w) (1/B) Σ_i L(Q_i; θ, w_i^(S)) into ``.grad`` of body and head.

    The same gradient as ``meta_loss(...).backward()`` (tested to ~1e-10 in float64), by the
    body/head split of the module docstring, one group of ``speed.tasks_per_call(B)`` tasks at a
    time. ``features_fn`` is a ``feature_extractor(body, speed, ...)``, made once by the caller
    (default: made here). Returns the mean query loss and accuracy as Python floats.
    """
    speed = speed or Speed()
    features_fn = features_fn or feature_extractor(body, speed)
    meta_batch = len(images)
    group = speed.tasks_per_call(meta_batch)
    params = {k: v.detach() for k, v in head.named_parameters()}
    head_grads = {k: torch.zeros_like(v) for k, v in params.items()}
    losses, accuracies = [], []
    for start in range(0, meta_batch, group):
        x, y = images[start:start + group], labels[start:start + group]
        features = features_fn(x)                                          # Z = f_θ(X)
        detached = features.detach().to(params["weight"].dtype)            # Ẑ = stopgrad(Z)
        g_params, g_features, task_losses, task_accuracies = head_gradients(
            head, params, detached, y, step_size, steps, first_order, scale=1.0 / meta_batch)
        features.backward(g_features.to(features.dtype))                   # (∂L/∂Z)(∂Z/∂θ)
        for k in head_grads:
            head_grads[k] += g_params[k]
        losses.append(task_losses)
        accuracies.append(task_accuracies)
    for name, p in head.named_parameters():
        p.grad = head_grads[name] if p.grad is None else p.grad + head_grads[name]
    return torch.cat(losses).mean().item(), torch.cat(accuracies).mean().item()


def fast_meta_train_step(body, head, optimizer, images, labels, step_size, steps,
                         first_order=False, speed: Speed | None = None, features_fn=None,
                         average=None):
    """``meta_train_step`` on the fast path: zero grads, fast meta-gradient, optimizer step
    (``average``: the data-parallel gradient all-reduce, see ``anil.algorithm.outer_step``)."""
    optimizer.zero_grad(set_to_none=True)
    loss, accuracy = fast_meta_loss_backward(body, head, images, labels, step_size, steps,
                                             first_order, speed, features_fn)
    return outer_step(optimizer, loss, accuracy, average)


# ------------------------------------------------------------------------------- evaluation


def _adapted_accuracy(head, params, features, labels, step_size, steps):
    adapted = adapt_head(head, params, features[0::2], labels[0::2], step_size, steps)
    logits = functional_call(head, adapted, (features[1::2],))
    return (logits.argmax(1) == labels[1::2]).to(logits.dtype).mean()


def batch_accuracies(body, head, images, labels, step_size: float, steps: int,
                     speed: Speed | None = None, features_fn=None) -> torch.Tensor:
    """Query accuracy after S inner steps for each of b tasks, images [b, 2NK, C, H, W].

    The body runs under ``torch.inference_mode`` (no graph, no version counters), each task with
    its own batch-norm statistics; the b heads adapt together with plain gradients: the closed
    form of ``linear_head_loop`` for a linear head, else ``adapt_head`` vmapped over tasks
    (``torch.func.grad`` under ``no_grad`` builds no outer graph).
    """
    features_fn = features_fn or feature_extractor(body, speed or Speed())
    params = {k: v.detach() for k, v in head.named_parameters()}
    with torch.inference_mode():
        features = features_fn(images)
    features = features.to(params["weight"].dtype)
    if type(head) is nn.Linear:  # closed-form inner steps, no autograd at all
        with torch.inference_mode():
            return linear_head_loop(params["weight"], params["bias"], features, labels,
                                    step_size, steps)[1]
    # Inference tensors cannot enter torch.func.grad; a clone outside inference mode can.
    features = features.clone()
    with torch.no_grad():
        return vmap(_adapted_accuracy, in_dims=(None, None, 0, 0, None, None))(
            head, params, features, labels, step_size, steps)


def fast_evaluate(body, head, sampler, num_tasks: int, step_size: float, steps: int,
                  device="cpu", speed: Speed | None = None, tasks_per_call: int = 8,
                  features_fn=None, progress=None):
    """``anil.evaluation.evaluate`` on the fast path: the same tasks 0..num_tasks-1, the same
    accuracies (tested), ``tasks_per_call`` tasks at a time. Returns (mean, ci95, list).
    ``progress(done, total)``, if given, is called after each group of tasks."""
    features_fn = features_fn or feature_extractor(body, speed or default_speed(device))
    accuracies = []
    for start in range(0, num_tasks, tasks_per_call):
        tasks = [sampler.task(i) for i in range(start, min(start + tasks_per_call, num_tasks))]
        images = torch.stack([t.images for t in tasks]).to(device)
        labels = torch.stack([t.labels for t in tasks]).to(device)
        accuracies += batch_accuracies(body, head, images, labels, step_size, steps,
                                       features_fn=features_fn).tolist()
        if progress is not None:
            progress(len(accuracies), num_tasks)
    mean, ci = mean_ci95(accuracies)
    return mean, ci, accuracies
