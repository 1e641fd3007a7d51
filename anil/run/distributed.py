"""Data-parallel meta-training across processes and machines with ``torch.distributed``.

``torchrun`` starts P processes (one per GPU, or several CPU workers) and gives each its RANK r,
the WORLD_SIZE P and its LOCAL_RANK on its machine. The meta-batch of B tasks is split evenly:
every process draws the same B task ids (same sampler, same seed), and process r adapts only its
share, the tasks at positions r·b .. (r+1)·b − 1 with b = B/P. The meta-gradient of the whole
meta-batch is the average of the per-process gradients of the per-process mean loss:

    ∇ (1/B) Σ_{i=1..B} L(Q_i; θ, w_i^(m))  =  (1/P) Σ_r ∇ (1/b) Σ_{i ∈ share(r)} L(Q_i; θ, w_i^(m))

so one all-reduce (sum, then divide by P) of the gradients after ``backward()`` gives every
process the gradient of the whole meta-batch, and every process takes the same optimiser step
from the same parameters. The tasks of a step therefore do not depend on P: P processes with
meta-batch B train exactly like one process with meta-batch B (up to float rounding).

Why an explicit all-reduce rather than DistributedDataParallel: the body runs once per task, B/P
times before one ``backward()``, and the head is applied through ``torch.func.functional_call``.
DDP expects one forward per backward of the wrapped module and would need ``no_sync`` tricks or
a wrapper around the whole meta-loss; the explicit all-reduce of the summed gradients is one
collective per step, no bucketing subtleties, and visibly the equation above. (For ANIL the
gradients are small; overlapping communication with backward, DDP's main gain, matters little.)

Evaluation tasks 0..n−1 are split the same way (process r takes tasks r, r+P, r+2P, ...), and the
per-task accuracies are gathered back into task order, so the mean ± CI is over every task
exactly once, and equals the single-process result.

A process that dies (crash, kill, lost machine) closes its connections and the others fail at
their next collective; a process that hangs makes the others give up after ``timeout`` seconds.
Either way the survivors raise ``DistributedError`` with a one-line message instead of hanging.
(With nccl, a timed-out collective is caught by PyTorch's NCCL watchdog, which ends the process
with its own message; torchrun then stops the rest.)
"""

from __future__ import annotations

import datetime
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from anil import algorithm
from anil.evaluation import accuracies_of, mean_ci95


class DistributedError(RuntimeError):
    """Multi-process training cannot go on; the message says what happened and what to do."""


@dataclass
class Context:
    """Where this process stands: its rank among ``world_size`` processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    def average(self, tensors) -> None:
        """Average ``tensors`` across processes, in place (one all-reduce for all of them)."""
        average_(self, tensors)


def _env_int(name: str) -> int:
    text = os.environ.get(name)
    try:
        return int(text)
    except (TypeError, ValueError):
        raise DistributedError(
            f"environment variable {name}={text!r} is not an integer; launch with torchrun, which sets "
            f"RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT") from None


def setup(device: str = "cpu", timeout: float = 300.0) -> Context:
    """The context of this process; joins the process group when launched by torchrun.

    Without torchrun's environment (no WORLD_SIZE, or WORLD_SIZE=1) this is a single process on
    ``device`` and no process group is made. Otherwise: backend nccl when ``device`` is "cuda"
    (each process on GPU ``LOCAL_RANK``), gloo on CPU; collectives give up after ``timeout`` s.
    """
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") <= 1:
        return Context(device=torch.device(device))
    rank, world_size, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if device == "mps":
        raise DistributedError("torchrun with --device mps is not supported (no process-group "
                               "backend for Apple GPUs); use --device cpu or cuda, or one process")
    if not 0 <= rank < world_size:
        raise DistributedError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world_size - 1}; launch with torchrun")
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPU(s); "
                f"use torchrun --nproc_per_node={torch.cuda.device_count()} or fewer")
        torch.cuda.set_device(local_rank)
        ctx_device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        ctx_device, backend = torch.device(device), "gloo"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as e:  # the store's errors (DistStoreError, ...) are RuntimeErrors
        raise DistributedError(
            f"rank {rank}: could not join the {world_size} processes at "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} ({_first_line(e)}); "
            f"check that every machine runs the same torchrun command with the same "
            f"--rdzv-endpoint/--master_addr and that the port is reachable") from None
    return Context(rank, world_size, local_rank, ctx_device)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def _first_line(error: BaseException) -> str:
    """The error's first line, without gloo's "[/path/to/pair.cc:561] " source location."""
    lines = str(error).strip().splitlines()
    return re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", lines[0]) if lines else type(error).__name__


@contextmanager
def _collective(ctx: Context, what: str):
    """Turn a failed collective (a dead or hung peer) into a one-line ``DistributedError``."""
    try:
        yield
    except RuntimeError as e:  # gloo raises plain RuntimeError, nccl DistBackendError (a subclass)
        raise DistributedError(
            f"rank {ctx.rank}: lost the other processes during {what} ({_first_line(e)}); another "
            f"rank probably failed or was killed (see its error); if it is only slow, raise "
            f"--dist-timeout") from None


def barrier(ctx: Context, what: str = "a barrier") -> None:
    if ctx.distributed:
        with _collective(ctx, what):
            dist.barrier()


@contextmanager
def main_first(ctx: Context, what: str = "preparing the data"):
    """Run the block on rank 0 first, then on the other ranks (e.g. generating a dataset once)."""
    if not ctx.is_main:
        barrier(ctx, f"the wait for rank 0 ({what})")
    yield
    if ctx.is_main:
        barrier(ctx, what)


def share(meta_batch: int, ctx: Context) -> slice:
    """Positions r·b .. (r+1)·b − 1 of the meta-batch, b = B/P. B must be a multiple of P."""
    if meta_batch % ctx.world_size:
        lower = max(ctx.world_size, meta_batch // ctx.world_size * ctx.world_size)
        raise DistributedError(
            f"--meta-batch {meta_batch} cannot be split evenly over {ctx.world_size} processes; use a "
            f"multiple of {ctx.world_size} (e.g. {lower} or {lower + ctx.world_size}) or another "
            f"number of processes")
    b = meta_batch // ctx.world_size
    return slice(ctx.rank * b, (ctx.rank + 1) * b)


def next_meta_batch(sampler, meta_batch: int, ctx: Context):
    """This process's share of the next meta-batch: images [B/P, 2NK, C, H, W], labels [B/P, 2NK].

    Every process draws all B task ids, so the samplers stay in step and the tasks of a step are
    the same for any number of processes; only this process's tasks are loaded. With P = 1 this
    is exactly ``sampler.batch(meta_batch)``.
    """
    mine = share(meta_batch, ctx)
    task_ids = [sampler.next_task_id() for _ in range(meta_batch)]
    tasks = [sampler.task(i) for i in task_ids[mine]]
    return torch.stack([t.images for t in tasks]), torch.stack([t.labels for t in tasks])


def broadcast_parameters(ctx: Context, modules) -> None:
    """Copy rank 0's parameters to every process, so that all start from the same (θ, w)."""
    if not ctx.distributed:
        return
    with _collective(ctx, "the initial broadcast of the parameters"), torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor, src=0)


def average_(ctx: Context, tensors) -> None:
    """tensors ← (1/P) Σ_r tensors(r), in place, as one all-reduce over a flat buffer."""
    tensors = list(tensors)
    if not ctx.distributed or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    with _collective(ctx, "the gradient all-reduce"):
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def average_gradients(ctx: Context, params, loss, accuracy) -> tuple[float, float]:
    """Step 4 of an outer step, between ``backward()`` and ``optimizer.step()``:

        ∇_(θ,w) ← (1/P) Σ_r ∇_(θ,w)^(r)

    Each process holds the gradient of its B/P tasks' mean loss; their mean is the gradient of
    the whole meta-batch's mean loss (docs/design.md, "Data-parallel training"), so every
    process then takes the same step. The reported loss and accuracy are averaged in the same
    all-reduce. Alone, nothing is averaged: returns (loss, accuracy) as floats."""
    average = ctx.average if ctx.distributed else None
    return algorithm.average_gradients(params, loss, accuracy, average)


def gather_task_values(ctx: Context, mine, num_tasks: int) -> list[float]:
    """All processes' per-task values, back in task order 0..n−1 (process r holds r, r+P, ...)."""
    if not ctx.distributed:
        return list(mine)
    per_rank = -(-num_tasks // ctx.world_size)  # ceil: the first n mod P ranks hold one more
    padded = torch.full((per_rank,), float("nan"), dtype=torch.float64, device=ctx.device)
    padded[:len(mine)] = torch.tensor(list(mine), dtype=torch.float64)
    gathered = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    with _collective(ctx, "gathering the evaluation accuracies"):
        dist.all_gather(gathered, padded)
    # Row r holds tasks r, r+P, ...; reading column by column restores 0, 1, 2, ...
    in_order = torch.stack(gathered).T.reshape(-1)[:num_tasks]
    return in_order.tolist()


def evaluate_sharded(ctx: Context, body, head, sampler, num_tasks: int, step_size: float,
                     steps: int, **options):
    """``anil.evaluation.evaluate`` with the tasks split across processes: the same tasks, the
    same (mean, ci95, per-task accuracies) on every process. ``options`` go to
    ``accuracies_of`` (features_fn, head_loop, progress, ...)."""
    mine = accuracies_of(body, head, sampler, range(ctx.rank, num_tasks, ctx.world_size),
                         step_size, steps, ctx.device, **options)
    accuracies = gather_task_values(ctx, mine, num_tasks)
    mean, ci = mean_ci95(accuracies)
    return mean, ci, accuracies


def any_true(ctx: Context, flag: bool) -> bool:
    """Whether ``flag`` is true on any process (so that, e.g., all processes stop together)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([float(flag)], device=ctx.device)
    with _collective(ctx, "agreeing on a stop request"):
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
