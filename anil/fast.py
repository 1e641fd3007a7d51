"""The fast path: the same meta-gradient and accuracies as ``anil.algorithm``, computed faster.

``anil.algorithm`` is the readable reference: per task, the body's features flow through the
differentiable inner loop and one ``backward()`` reaches θ through every adaptation step. This
module uses the fact that θ enters the meta-loss only through the features Z = f_θ(X)
(docs/design.md, "The body/head split"):

    ∂L/∂θ = (∂L/∂Z)(∂Z/∂θ),      L = (1/B) Σ_i L(Q_i; θ, w_i^(m)(θ, w))

where ∂L/∂Z already carries every second-order head term. So a step is

    1. Z = f_θ(X)                          body forward (ordinary autograd graph)
    2. Ẑ = stopgrad(Z)                      the head loop sees a detached copy
    3. ∂L/∂w, ∂L/∂Ẑ                         differentiable inner loop over a group of tasks
    4. Z.backward(∂L/∂Ẑ)                    one first-order backward through the body

and the body is a plain module again: channels-last, bfloat16 autocast and ``torch.compile``
apply to it as to a supervised network. The head loop runs in the model's dtype (float32), so
mixed precision touches only the body.

The head loop of step 3 (``Speed.head_loop``):

    torch.func    (default) ``anil.algorithm.adapt_and_score`` — torch.func.grad and
                  functional_call — vmapped over the tasks of the group; one ordinary
                  ``torch.autograd.grad`` of the summed query losses gives ∂L/∂w and ∂L/∂Ẑ
    closed-form   (opt-in, linear head only) the same inner steps with the hand-derived
                  gradient ∇_W L = (1/n)(P − Y)ᵀZ, ∇_b L = (1/n)1ᵀ(P − Y) as batched matrix
                  products; fewer operations, so less per-operation overhead on a CPU. The
                  tests also use it as an oracle independent of torch.func.

Execution strategies over a meta-batch of B tasks (the same meta-gradient, tested):

    task    one task at a time: body on its 2NK images, head loop, backward (least memory)
    chunk   c tasks share one head-loop call and one backward
    vmap    all B tasks at once (chunk with c = B)

and, independently, ``batch_body``: run the body once over all tasks of a group, batch norm
still using each task's own statistics (``batched_features``), instead of once per task.
Every strategy and head loop runs every batch-norm mode (``anil.model.BATCH_NORMS``: which of
a task's images give the statistics), with the same meta-gradient as the readable path. On a
CPU small per-task body calls are faster; on a GPU one large call is. The head loop always
handles the whole group in one vmapped call, which is what makes torch.func cheap: its
per-operation overhead is paid once per group instead of once per task.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from anil.algorithm import adapt_and_score, outer_step
from anil.model import ConvBody, check_batch_norm, interleaved_task_features
from anil.sampler import support_query

STRATEGIES = ("task", "chunk", "vmap")
PRECISIONS = ("float32", "bfloat16")
HEAD_LOOPS = ("torch.func", "closed-form")


@dataclass
class Speed:
    """How to execute a step; none of these change the math (bfloat16 changes rounding).

    strategy       "task", "chunk" or "vmap": how many tasks share one head-loop call and one
                   body backward (1, ``chunk_size`` or all B; see the module docstring)
    batch_body     run the body once over all tasks of a group (per-task batch norm, see
                   ``batched_features``) instead of once per task; GPUs want this, CPUs do not
    precision      "float32", or "bfloat16" autocast of the body only
    channels_last  channels-last memory format for the conv body (inputs and weights)
    head_loop      "torch.func" (vmapped ``adapt_and_score``) or "closed-form" (linear head)
    compile_head   ``torch.compile`` the head loop (opt-in: it compiles for about a minute on a
                   CPU, then saves most of the head loop's time; docs/speed.md)
    """

    strategy: str = "vmap"
    chunk_size: int = 8
    batch_body: bool = False
    precision: str = "float32"
    channels_last: bool = False
    head_loop: str = "torch.func"
    compile_head: bool = False

    def __post_init__(self):
        for name, allowed in (("strategy", STRATEGIES), ("precision", PRECISIONS),
                              ("head_loop", HEAD_LOOPS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {self.chunk_size}")

    def tasks_per_call(self, meta_batch: int) -> int:
        return {"task": 1, "chunk": min(self.chunk_size, meta_batch), "vmap": meta_batch}[self.strategy]


def default_speed(device, head_loop: str = "torch.func") -> Speed:
    """Measured defaults (docs/speed.md), channels-last float32 on every device. CPU: the body
    task by task (small batches stay in cache), the head loop over chunks of 8 tasks (its
    per-operation overhead shared by 8 tasks; the activations of at most 8 tasks alive). GPU:
    all tasks of the meta-batch in one body call and one head-loop call."""
    if torch.device(device).type in ("cuda", "mps"):
        return Speed(strategy="vmap", batch_body=True, channels_last=True, head_loop=head_loop)
    return Speed(strategy="chunk", chunk_size=8, channels_last=True, head_loop=head_loop)


# ------------------------------------------------------------------------------------ the body


def _per_task_batch_norm(x: torch.Tensor, tasks: int, norm: nn.BatchNorm2d,
                         statistics_of: int | None = None) -> torch.Tensor:
    """BatchNorm2d with each task's own batch statistics, x [tasks·m, C, H, W]:

        y = γ (x − μ_t) / √(σ²_t + ε) + β,   μ_t, σ²_t over the m images (and H, W) of task t

    (over its first ``statistics_of`` images only, if given: ``ConvBody``'s ``statistics_of``)

    written as y = x·s + (β − μ_t·s), s = γ / √(σ²_t + ε), on a [tasks, m, C, H, W] view (no
    copy, any memory format). torch.func.vmap of BatchNorm2d computes the same thing but moves
    the task dimension into the channels with copies (measured about 3× slower on a CPU).
    """
    x5 = x.view(tasks, -1, *x.shape[1:])
    var, mean = torch.var_mean(x5[:, :statistics_of], dim=(1, 3, 4), correction=0, keepdim=True)
    scale = norm.weight.view(1, 1, -1, 1, 1) * torch.rsqrt(var + norm.eps)
    return (x5 * scale + (norm.bias.view(1, 1, -1, 1, 1) - mean * scale)).reshape(x.shape)


def batched_features(body: nn.Module, images: torch.Tensor, batch_norm: str = "task") -> torch.Tensor:
    """f_θ applied to each task of images [b, m, C, H, W] in one call → [b, m, D].

    Batch norm must see one task at a time (docs/design.md, "Batch norm per task"), and within
    it the images ``batch_norm`` names (``anil.model.task_features``). For the ConvBody the
    convolutions run on all b·m images at once and batch norm uses per-task statistics: with
    each task's images reordered support first, "separate" is per-half statistics (2b groups of
    m/2) and "support" the statistics of the first m/2. Any other body is vmapped over tasks
    (BatchNorm2d(track_running_stats=False) then keeps per-task statistics).
    """
    check_batch_norm(body, batch_norm)
    b, m = images.shape[:2]
    if isinstance(body, ConvBody) and all(isinstance(k.norm, nn.BatchNorm2d) and
                                          not k.norm.track_running_stats for k in body.blocks):
        groups, statistics_of = {"task": (b, None), "separate": (2 * b, None),
                                 "support": (b, m // 2)}[batch_norm]
        if batch_norm != "task":  # [b, support..., query...]: each half one contiguous block
            images = torch.cat(support_query(images, dim=1), dim=1)
        x = images.flatten(0, 1)
        for block in body.blocks:
            x = block.pool(torch.relu(_per_task_batch_norm(block.conv(x), groups, block.norm,
                                                           statistics_of)))
        z = x.flatten(1).view(b, m, -1)
        return z if batch_norm == "task" else torch.stack(z.split(m // 2, dim=1), 2).flatten(1, 2)
    return vmap(partial(interleaved_task_features, body, batch_norm=batch_norm))(images)


def feature_extractor(body: nn.Module, speed: Speed, compile: bool = False,
                      batch_norm: str = "task"):
    """The function Z = f_θ(X), images [b, m, C, H, W] → features [b, m, D], that a speed asks
    for, batch norm as ``batch_norm`` (``anil.model.task_features``; the function's attribute
    ``batch_norm`` says which). Puts the body's weights in channels-last when asked;
    ``compile=True`` wraps the body call in ``torch.compile`` (it shares the body's parameters)."""
    check_batch_norm(body, batch_norm)
    if speed.channels_last:
        body.to(memory_format=torch.channels_last)
    if speed.batch_body:
        call = partial(batched_features, body, batch_norm=batch_norm)
    else:
        call = body if batch_norm == "task" else partial(interleaved_task_features, body,
                                                         batch_norm=batch_norm)
    if compile:
        call = torch.compile(call)

    # The images stay NCHW: a convolution with channels-last weights returns channels-last
    # activations from the first layer on, and converting the input too would only add a copy
    # (measured: 0.6 MB more peak memory per 5-way 5-shot 32×32×3 task, no speed gained).
    def features(images: torch.Tensor) -> torch.Tensor:
        with _autocast(images, speed.precision):
            return call(images) if speed.batch_body else torch.stack([call(x) for x in images])
    features.batch_norm = batch_norm
    return features


def matching_features(body, speed, features_fn, batch_norm: str):
    """``features_fn`` if it normalises as ``batch_norm`` asks, else a one-line error; made
    here (``feature_extractor``) if None."""
    if features_fn is None:
        return feature_extractor(body, speed, batch_norm=batch_norm)
    made_for = getattr(features_fn, "batch_norm", "task")
    if made_for != batch_norm:
        raise ValueError(f"features_fn was made with batch_norm={made_for!r} but "
                         f"batch_norm={batch_norm!r} was asked for; make it with "
                         f"feature_extractor(..., batch_norm={batch_norm!r})")
    return features_fn


def _autocast(images: torch.Tensor, precision: str):
    if precision == "bfloat16":
        return torch.autocast(images.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------- the head loop


def torch_func_head_loop(head: nn.Module, params, support_features, support_labels,
                         query_features, query_labels, step_size: float, steps: int,
                         first_order: bool = False):
    """``adapt_and_score`` for b tasks at once: vmap over the leading task dimension of the
    features [b, n, D] and labels [b, n]. Returns query losses [b] and accuracies [b]."""
    per_task = vmap(adapt_and_score, in_dims=(None, None, 0, 0, 0, 0, None, None, None))
    return per_task(head, params, support_features, support_labels, query_features, query_labels,
                    step_size, steps, first_order)


def closed_form_head_loop(head: nn.Module, params, support_features, support_labels,
                          query_features, query_labels, step_size: float, steps: int,
                          first_order: bool = False):
    """The same as ``torch_func_head_loop`` for a linear head, with the inner gradient in
    closed form (docs/design.md, "The closed-form head gradient"). With support features
    Z_s [n, D], one-hot labels Y and P = softmax(Z_s Wᵀ + b):

        W^(s+1) = W^(s) − α (1/n)(P − Y)ᵀ Z_s,     b^(s+1) = b^(s) − α (1/n) 1ᵀ(P − Y)

    written with batched matrix products over the b tasks, so ordinary autograd differentiates
    through it (second order). ``first_order`` detaches each step's gradient, as ``adapt_head``.
    """
    if type(head) is not nn.Linear:
        raise ValueError(f"the closed-form head loop is derived for nn.Linear heads, not "
                         f"{type(head).__name__}; use the torch.func head loop")
    tasks, ways = support_features.shape[0], params["weight"].shape[0]
    one_hot = F.one_hot(support_labels, ways).to(support_features.dtype)
    w = params["weight"].expand(tasks, -1, -1)                        # [b, N, D]
    b = params["bias"].expand(tasks, 1, ways)                         # [b, 1, N]
    n = support_features.shape[1]
    for _ in range(steps):
        residual = (torch.softmax(torch.baddbmm(b, support_features, w.mT), -1) - one_hot) / n
        grad_w, grad_b = residual.mT @ support_features, residual.sum(1, keepdim=True)
        if first_order:
            grad_w, grad_b = grad_w.detach(), grad_b.detach()
        w, b = w - step_size * grad_w, b - step_size * grad_b
    logits = torch.baddbmm(b, query_features, w.mT)                   # [b, q, N]
    losses = F.cross_entropy(logits.flatten(0, 1), query_labels.flatten(), reduction="none")
    accuracies = (logits.argmax(-1) == query_labels).to(logits.dtype).mean(1)
    return losses.view(tasks, -1).mean(1), accuracies


HEAD_LOOP_FUNCTIONS = {"torch.func": torch_func_head_loop, "closed-form": closed_form_head_loop}
_COMPILED = {}


def compiled_head_loop(name: str):
    """``torch.compile`` of a head loop, made once per process and shared by every call."""
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(HEAD_LOOP_FUNCTIONS[name])
    return _COMPILED[name]


def head_gradients(head: nn.Module, params, features, labels, step_size: float, steps: int,
                   first_order: bool = False, scale: float = 1.0, head_loop: str = "torch.func",
                   compiled: bool = False):
    """∂L/∂w and ∂L/∂Z of L = scale · Σ_i L(Q_i; θ, w_i^(m)) over a group of b tasks.

    ``features`` [b, 2NK, D] are treated as inputs (the caller detached them from the body);
    support and query are interleaved as in every task. One ordinary ``torch.autograd.grad``
    differentiates the whole head loop, second order unless ``first_order``.
    Returns (∂L/∂w dict, ∂L/∂Z [b, 2NK, D], query losses [b], query accuracies [b]).
    """
    with torch.enable_grad():
        params = {k: v.detach().requires_grad_() for k, v in params.items()}
        features = features.detach().requires_grad_()
        (support_features, query_features), (support_labels, query_labels) = (
            support_query(features, dim=1), support_query(labels, dim=1))
        loop = compiled_head_loop(head_loop) if compiled else HEAD_LOOP_FUNCTIONS[head_loop]
        losses, accuracies = loop(head, params, support_features, support_labels, query_features,
                                  query_labels, step_size, steps, first_order)
        *grad_params, grad_features = torch.autograd.grad(scale * losses.sum(),
                                                          [*params.values(), features])
    return dict(zip(params, grad_params)), grad_features, losses.detach(), accuracies.detach()


# ---------------------------------------------------------------------------- the training step


def meta_gradient(body, head, images, labels, step_size: float, steps: int,
                  first_order: bool = False, speed: Speed | None = None, features_fn=None,
                  batch_norm: str = "task"):
    """Accumulate ∇_(θ,w) (1/B) Σ_i L(Q_i; θ, w_i^(m)) into ``.grad`` of body and head.

    The same gradient as ``meta_loss(...).backward()`` (tested to ~1e-10 in float64), by the
    body/head split of the module docstring, one group of ``speed.tasks_per_call(B)`` tasks at a
    time. ``features_fn`` is a ``feature_extractor(body, speed, ...)``, made once by the caller
    (default: made here), for the same ``batch_norm`` mode (``anil.model.task_features``; the
    statistics' dependence on θ is part of ∂Z/∂θ, so step 4 covers it). Returns the mean query
    loss and accuracy as Python floats.
    """
    speed = speed or Speed()
    features_fn = matching_features(body, speed, features_fn, batch_norm)
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
            head, params, detached, y, step_size, steps, first_order, scale=1.0 / meta_batch,
            head_loop=speed.head_loop, compiled=speed.compile_head)
        features.backward(g_features.to(features.dtype))                   # (∂L/∂Z)(∂Z/∂θ)
        for k in head_grads:
            head_grads[k] += g_params[k]
        losses.append(task_losses)
        accuracies.append(task_accuracies)
    for name, p in head.named_parameters():
        p.grad = head_grads[name] if p.grad is None else p.grad + head_grads[name]
    return torch.cat(losses).mean().item(), torch.cat(accuracies).mean().item()


def train_step(body, head, optimizer, images, labels, step_size, steps, first_order=False,
               speed: Speed | None = None, features_fn=None, average=None,
               batch_norm: str = "task"):
    """``anil.algorithm.meta_train_step`` on the fast path: zero grads, ``meta_gradient``,
    optimizer step (``average``: the data-parallel all-reduce, see ``outer_step``)."""
    optimizer.zero_grad(set_to_none=True)
    loss, accuracy = meta_gradient(body, head, images, labels, step_size, steps, first_order,
                                   speed, features_fn, batch_norm)
    return outer_step(optimizer, loss, accuracy, average)
