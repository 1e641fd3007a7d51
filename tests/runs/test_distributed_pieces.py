"""The pieces of data-parallel training (anil/run/distributed.py), without a process group:
each process's share of a meta-batch, the order of gathered values, the gradient average and
the outer step that uses it. The collectives are replaced by what the other processes would
send, so these run in milliseconds (test_distributed.py runs real gloo groups)."""

import numpy as np
import pytest
import torch

from anil.algorithm import meta_train_step
from anil.data import ClassSplit
from anil.model import ConvBody, make_head
from anil.run import distributed
from anil.sampler import TaskSampler

WAYS, SHOTS, META_BATCH = 3, 2, 4


def small_split():
    images = np.random.default_rng(0).integers(0, 256, (60, 8, 8, 1), dtype=np.uint8)
    return ClassSplit.from_labels(images, np.repeat(np.arange(10), 6), [f"c{i}" for i in range(10)])


@pytest.mark.parametrize("num_tasks", [None, 50])
def test_each_process_loads_its_share_of_the_same_meta_batch_without_a_group(num_tasks):
    """Every rank draws all B task ids (its sampler stays in step with the others) and loads
    positions r·B/P .. (r+1)·B/P − 1: together exactly one process's meta-batches."""
    split, world_size = small_split(), 2
    single = TaskSampler(split, WAYS, SHOTS, seed=3, num_tasks=num_tasks)
    ranks = [TaskSampler(split, WAYS, SHOTS, seed=3, num_tasks=num_tasks) for _ in range(world_size)]
    for _ in range(3):
        images, labels = single.batch(META_BATCH)
        shares = [distributed.next_meta_batch(sampler, META_BATCH,
                                              distributed.Context(rank=r, world_size=world_size))
                  for r, sampler in enumerate(ranks)]
        assert torch.equal(torch.cat([x for x, _ in shares]), images)
        assert torch.equal(torch.cat([y for _, y in shares]), labels)
        assert all(s.state_dict() == single.state_dict() for s in ranks)
    one = distributed.next_meta_batch(single, META_BATCH, distributed.Context())
    assert one[0].shape[0] == META_BATCH


def test_gathered_values_come_back_in_task_order_with_a_stand_in_group(monkeypatch):
    """7 tasks over 3 ranks: rank r holds tasks r, r+3, ...; all_gather is replaced by what the
    three ranks would send."""
    world_size, n = 3, 7
    held = {r: [float(t) / 10 for t in range(r, n, world_size)] for r in range(world_size)}

    def all_gather(out, tensor):
        for r, values in held.items():
            out[r].fill_(float("nan"))
            out[r][:len(values)] = torch.tensor(values, dtype=out[r].dtype)

    monkeypatch.setattr(distributed.dist, "all_gather", all_gather)
    for rank in range(world_size):
        ctx = distributed.Context(rank=rank, world_size=world_size)
        assert distributed.gather_task_values(ctx, held[rank], n) == [t / 10 for t in range(n)]


def test_average_is_the_mean_over_processes_with_a_stand_in_group(monkeypatch):
    """average_ sums across processes (all_reduce, replaced here by adding what the other rank
    sends) and divides by P, in place, tensor by tensor."""
    other = [torch.tensor([[1.0, 3.0], [5.0, 7.0]]), torch.tensor([10.0])]

    def all_reduce(flat, op):
        assert op == distributed.dist.ReduceOp.SUM
        flat += torch.cat([t.reshape(-1) for t in other])

    monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
    mine = [torch.tensor([[3.0, 1.0], [1.0, 1.0]]), torch.tensor([-4.0])]
    distributed.average_(distributed.Context(rank=0, world_size=2), mine)
    assert torch.equal(mine[0], torch.tensor([[2.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(mine[1], torch.tensor([3.0]))


def test_the_optimizer_step_uses_the_averaged_gradients_and_reports_averaged_metrics_without_a_group():
    """outer_step hands every gradient (a zero one for a parameter without) and the loss and
    accuracy to ``average`` once, before the step."""
    from anil.algorithm import outer_step
    p, q = torch.nn.Parameter(torch.tensor([1.0, 2.0])), torch.nn.Parameter(torch.tensor([3.0]))
    p.grad = torch.tensor([0.5, -1.0])
    optimizer = torch.optim.SGD([p, q], lr=1.0)
    sent = []

    def average(tensors):  # stands in for the mean over processes: here, halving
        sent.append([t.clone() for t in tensors])
        for t in tensors:
            t.mul_(0.5)

    loss, accuracy = outer_step(optimizer, torch.tensor(0.8), torch.tensor(0.6), average)
    assert len(sent) == 1 and len(sent[0]) == 3
    assert torch.equal(sent[0][0], torch.tensor([0.5, -1.0])) and torch.equal(sent[0][1], torch.zeros(1))
    assert torch.allclose(sent[0][2], torch.tensor([0.8, 0.6]))
    assert torch.equal(p.detach(), torch.tensor([0.75, 2.5])) and torch.equal(q.detach(), torch.tensor([3.0]))
    assert (loss, accuracy) == pytest.approx((0.4, 0.3))


@pytest.mark.parametrize("path", ["reference", "fast"])
def test_both_training_steps_average_across_processes_without_a_group(path):
    """The reference step and the fast step both pass ``average`` on to the optimizer step."""
    from anil import fast
    torch.manual_seed(0)
    body = ConvBody(1, 8, hidden=4, depth=2)
    head = make_head(body.feature_dim, WAYS)
    optimizer = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=0.01)
    images = torch.rand(2, 2 * WAYS * SHOTS, 1, 8, 8)
    labels = torch.arange(WAYS).repeat_interleave(2 * SHOTS).repeat(2, 1)
    sent = []
    step = meta_train_step if path == "reference" else fast.train_step
    step(body, head, optimizer, images, labels, 0.4, 2, average=sent.append)
    n_params = len([*body.parameters(), *head.parameters()])
    assert len(sent) == 1 and len(sent[0]) == n_params + 1  # every gradient, and the metrics


def test_the_loops_gradient_average_sends_every_gradient_and_the_metrics_once(monkeypatch):
    """train.py's step 4, ``average_gradients``: one all-reduce over every gradient (a zero one
    for a parameter without) and the loss and accuracy, divided by P; alone, no collective."""
    p, q = torch.nn.Parameter(torch.tensor([1.0, 2.0])), torch.nn.Parameter(torch.tensor([3.0]))
    p.grad = torch.tensor([0.5, -1.0])
    sent = []

    def all_reduce(flat, op):  # the other rank sends the same tensors, doubled
        sent.append(flat.clone())
        flat += 2 * flat

    monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
    ctx = distributed.Context(rank=0, world_size=2)
    loss, accuracy = distributed.average_gradients(ctx, [p, q], torch.tensor(0.8), 0.5)
    assert len(sent) == 1 and torch.allclose(sent[0], torch.tensor([0.5, -1.0, 0.0, 0.8, 0.5]))
    assert torch.equal(p.grad, torch.tensor([0.75, -1.5])) and torch.equal(q.grad, torch.zeros(1))
    assert (loss, accuracy) == pytest.approx((1.2, 0.75))
    q.grad = None
    alone = distributed.average_gradients(distributed.Context(), [p, q], torch.tensor(0.8), 0.5)
    assert len(sent) == 1 and q.grad is None and alone == pytest.approx((0.8, 0.5))
