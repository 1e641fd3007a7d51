"""Data-parallel meta-training (anil/distributed.py) with real gloo process groups on this machine.

Two processes with meta-batch B must train exactly like one process with the same B tasks, and
evaluate exactly like one process over the same tasks; a dead or hung process must make the
others exit with a message rather than hang. The library-level checks run in float64, where
Adam does not amplify rounding noise (see ``test_two_processes_train_like_one``).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from anil.run import distributed
from anil.algorithm import meta_train_step
from anil.data import ClassSplit
from anil.evaluation import evaluate
from anil.model import ConvBody, make_head
from anil.sampler import TaskSampler

ROOT = Path(__file__).resolve().parents[2]
WAYS, SHOTS, META_BATCH, STEPS, EVAL_TASKS = 3, 2, 4, 3, 7  # 7 tasks: not divisible by 2 ranks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank, world_size, port, timeout=30.0):
    """What torchrun does for a worker: the environment, then setup()."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    return distributed.setup("cpu", timeout=timeout)


def tiny_problem():
    """A random 10-class split of 8×8 images, a 2-block body with 4 filters, float64."""
    torch.set_default_dtype(torch.float64)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 8, 8, 1), dtype=np.uint8)
    split = ClassSplit.from_labels(images, np.repeat(np.arange(10), 6), [f"c{i}" for i in range(10)])
    torch.manual_seed(0)
    body = ConvBody(1, 8, hidden=4, depth=2)
    head = make_head(body.feature_dim, WAYS)
    with torch.no_grad():  # non-zero biases, so that no gradient vanishes by symmetry
        head.bias.normal_()
    return split, body, head


def train_and_evaluate(ctx, out_file):
    """STEPS Adam steps of meta-batch META_BATCH, then an evaluation; the results go to out_file."""
    split, body, head = tiny_problem()
    if ctx.rank == 1:  # a different start on rank 1: broadcast_parameters must undo it
        with torch.no_grad():
            head.weight.add_(1.0)
    distributed.broadcast_parameters(ctx, [body, head])
    initial = {k: v.clone() for k, v in [*body.state_dict().items(), *head.state_dict().items()]}
    sampler = TaskSampler(split, WAYS, SHOTS, seed=3)
    optimizer = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=0.01)
    average = ctx.average if ctx.distributed else None
    losses, first_grads, my_images = [], None, []
    for step in range(STEPS):
        images, labels = distributed.next_meta_batch(sampler, META_BATCH, ctx)
        my_images.append(images)
        losses.append(meta_train_step(body, head, optimizer, images.double(), labels, 0.4, 2,
                                      average=average))
        if step == 0:
            first_grads = [p.grad.clone() for p in [*body.parameters(), *head.parameters()]]
    body.float(), head.float()  # evaluation in float32, on the sampler's float32 images
    test = TaskSampler(split, WAYS, SHOTS, seed=4)
    sharded = distributed.evaluate_sharded(ctx, body, head, test, EVAL_TASKS, 0.4, 3)
    final = {k: v.clone() for k, v in [*body.state_dict().items(), *head.state_dict().items()]}
    torch.save({"initial": initial, "final": final, "first_grads": first_grads, "losses": losses,
                "images": my_images, "sharded": sharded, "body": body.state_dict(),
                "head": head.state_dict()}, out_file)


def _worker(rank, world_size, port, out_dir):
    ctx = join_group(rank, world_size, port)
    train_and_evaluate(ctx, Path(out_dir) / f"rank{rank}.pt")
    distributed.teardown(ctx)


def run_processes(fn, world_size, args, timeout=120):
    """Spawn ``fn(rank, *args)`` on world_size processes; fail the test if they outlive timeout."""
    processes = mp.start_processes(fn, args=args, nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not processes.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"{world_size} processes did not finish within {timeout}s")
    finally:
        for p in processes.processes:
            if p.is_alive():
                p.kill()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same training and evaluation on 2 processes (spawned, gloo) and on this process."""
    out = tmp_path_factory.mktemp("dist")
    run_processes(_worker, 2, (2, free_port(), str(out)))
    old_dtype = torch.get_default_dtype()
    try:
        train_and_evaluate(distributed.Context(), out / "single.pt")
    finally:
        torch.set_default_dtype(old_dtype)
    return {name: torch.load(out / f"{name}.pt", weights_only=False)
            for name in ("rank0", "rank1", "single")}


def test_two_processes_train_like_one(runs):
    """2 processes × B/2 tasks = 1 process × B tasks: same gradients, same parameters after k steps.

    float64 matters: a conv bias followed by batch norm has a gradient that is exactly zero in
    exact arithmetic; in float32 its rounding noise is not far below Adam's ε = 1e-8, so Adam
    turns it into steps of up to ~lr that differ between any two summation orders. In float64
    the noise stays far below ε.
    """
    r0, r1, single = runs["rank0"], runs["rank1"], runs["single"]
    # Rank 1 started from other weights; the broadcast gave it rank 0's.
    for k in r0["initial"]:
        assert torch.equal(r0["initial"][k], r1["initial"][k]), k
    # Each rank drew different tasks, and together exactly the single process's meta-batches.
    for step in range(STEPS):
        assert not torch.equal(r0["images"][step], r1["images"][step])
        assert torch.equal(torch.cat([r0["images"][step], r1["images"][step]]), single["images"][step])
    # The averaged gradient is the whole meta-batch's gradient (Adam would hide a wrong scale).
    for g0, g1, g in zip(r0["first_grads"], r1["first_grads"], single["first_grads"]):
        assert torch.equal(g0, g1)
        torch.testing.assert_close(g0, g, rtol=1e-10, atol=1e-13)
    # Every rank took the same steps; the parameters equal the single process's and have moved.
    moved = 0.0
    for k in single["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), k
        torch.testing.assert_close(r0["final"][k], single["final"][k], rtol=1e-9, atol=1e-9)
        moved = max(moved, (single["final"][k] - single["initial"][k]).abs().max().item())
    assert moved > 1e-3
    # The logged loss and accuracy are those of the whole meta-batch.
    losses, single_losses = np.array(r0["losses"]), np.array(single["losses"])
    np.testing.assert_allclose(losses[:, 0], single_losses[:, 0], rtol=1e-10)
    np.testing.assert_allclose(losses[:, 1], single_losses[:, 1], rtol=1e-6)  # float32 accuracy
    assert r0["losses"] == r1["losses"]


def test_sharded_evaluation_equals_single_process_evaluation(runs):
    """7 tasks over 2 ranks (4 + 3): every task exactly once, in task order, same mean and CI."""
    r0, r1 = runs["rank0"], runs["rank1"]
    assert r0["sharded"] == r1["sharded"]
    mean, ci, accuracies = r0["sharded"]
    assert len(accuracies) == EVAL_TASKS and not np.isnan(accuracies).any()
    torch.set_default_dtype(torch.float64)
    try:  # single-process anil.evaluation.evaluate, with rank 0's trained weights
        _, body, head = tiny_problem()
        body.float(), head.float()
        body.load_state_dict(r0["body"])
        head.load_state_dict(r0["head"])
        split = tiny_problem()[0]
        expected = evaluate(body, head, TaskSampler(split, WAYS, SHOTS, seed=4), EVAL_TASKS, 0.4, 3)
    finally:
        torch.set_default_dtype(torch.float32)
    assert accuracies == expected[2]
    assert (mean, ci) == expected[:2]
    assert len(set(accuracies)) > 1  # the tasks differ, so a wrong order would show


def test_meta_batch_must_divide_evenly():
    ctx = distributed.Context(rank=2, world_size=4)
    assert distributed.share(8, ctx) == slice(4, 6)
    with pytest.raises(distributed.DistributedError,
                       match=r"--meta-batch 6 cannot be split evenly over 4 processes; use a "
                             r"multiple of 4 \(e\.g\. 4 or 8\)"):
        distributed.share(6, ctx)
    with pytest.raises(distributed.DistributedError, match="e.g. 4 or 8"):
        distributed.share(3, ctx)


@pytest.mark.parametrize("env,message", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer; launch with torchrun"),
    ({"WORLD_SIZE": "2", "RANK": "5", "LOCAL_RANK": "0"}, "RANK=5 is outside 0..WORLD_SIZE-1=1"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "LOCAL_RANK=None is not an integer"),
])
def test_a_broken_launch_environment_is_explained(env, message, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if "LOCAL_RANK" not in env:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(distributed.DistributedError, match=message):
        distributed.setup("cpu")


def test_one_process_needs_no_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)


def test_gathered_values_come_back_in_task_order_without_a_group():
    assert distributed.gather_task_values(distributed.Context(), [0.5, 0.25], 2) == [0.5, 0.25]


def _hanging_worker(rank, world_size, port, out_dir):
    ctx = join_group(rank, world_size, port, timeout=3.0)
    distributed.barrier(ctx)
    if rank == 1:
        time.sleep(120)  # alive but stuck: no connection closes, only the timeout can help
        return
    start = time.monotonic()
    try:
        ctx.average([torch.ones(3)])
        message = "no error"
    except distributed.DistributedError as e:
        message = str(e)
    Path(out_dir, "rank0.txt").write_text(f"{time.monotonic() - start:.1f}\n{message}")
    os._exit(0)  # skip destroying a group whose peer is stuck


def test_a_hung_rank_makes_the_others_give_up_within_the_timeout(tmp_path):
    processes = mp.start_processes(_hanging_worker, args=(2, free_port(), str(tmp_path)), nprocs=2,
                                   join=False, start_method="spawn")
    try:
        deadline = time.monotonic() + 60
        while processes.processes[0].is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not processes.processes[0].is_alive(), "rank 0 hung instead of timing out"
    finally:
        for p in processes.processes:
            p.kill()
    seconds, message = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert message.startswith("rank 0: lost the other processes during the gradient all-reduce")
    assert "--dist-timeout" in message and "\n" not in message
    assert float(seconds) > 2.5  # it waited for its 3 s timeout (the 60 s loop above is the hang guard)


# ----------------------------------------------------------------------------- train.py


TINY = ["--iterations", "3", "--meta-batch", "4", "--hidden", "8", "--eval-tasks", "9",
        "--val-tasks", "5", "--val-every", "2", "--log-every", "1"]


def env_one_thread():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_torchrun_two_processes_match_one_process(glyph_root, tmp_path):
    common = ["--data-root", str(glyph_root), *TINY]
    one = subprocess.run([sys.executable, "train.py", *common, "--out", str(tmp_path / "one")],
                         cwd=ROOT, env=env_one_thread(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "train.py", *common, "--out", str(tmp_path / "two")],
                         cwd=ROOT, env=env_one_thread(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    # Only rank 0 logs.
    assert two.stdout.count("ANIL on glyphs") == 1 and "× 2 processes" in two.stdout
    assert sum(line.startswith("test accuracy") for line in two.stdout.splitlines()) == 1

    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s2["world_size"] == 2 and s1["world_size"] == 1
    for key in ("test_accuracy", "untrained_test_accuracy"):
        assert abs(s1[key] - s2[key]) < 1e-9, key
    assert [r["iteration"] for r in s1["history"]] == [r["iteration"] for r in s2["history"]]
    for r1, r2 in zip(s1["history"], s2["history"]):
        if "loss" in r1:  # not the iteration-0 row: the untrained network's validation only
            assert abs(r1["loss"] - r2["loss"]) < 1e-5
    # The same network function: features and logits on some images. (Conv biases are left out
    # of a parameter comparison: batch norm cancels them, their float32 gradient is rounding
    # noise, and Adam turns noise into lr-sized steps; see test_two_processes_train_like_one.)
    w1 = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    w2 = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    for name in w1["body"]:
        if not name.endswith("conv.bias"):
            torch.testing.assert_close(w1["body"][name], w2["body"][name], rtol=1e-4, atol=1e-6)
    nets = []
    for w in (w1, w2):
        body, head = ConvBody(1, 28, hidden=8), make_head(8 * 1 * 1, 5)
        body.load_state_dict(w["body"]), head.load_state_dict(w["head"])
        nets.append((body, head))
    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(nets[0][1](nets[0][0](x)), nets[1][1](nets[1][0](x)),
                                   rtol=1e-4, atol=1e-5)


def test_a_rank_killed_mid_run_makes_the_run_exit_with_a_message(glyph_root, tmp_path):
    """The two processes torchrun would start, by hand; rank 1 is killed after training starts."""
    port = str(free_port())
    args = [sys.executable, "train.py", "--data-root", str(glyph_root), "--hidden", "8",
            "--meta-batch", "2", "--iterations", "100000", "--log-every", "1", "--val-every", "0",
            "--eval-tasks", "2", "--dist-timeout", "20", "--out", str(tmp_path / "run")]
    ranks = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**env_one_thread(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                                   "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(2)]
    try:
        for line in ranks[0].stdout:  # wait until meta-training runs
            if line.startswith("iter     2/"):
                break
        else:
            pytest.fail(f"rank 0 stopped before training: {ranks[0].stderr.read()}")
        ranks[1].send_signal(signal.SIGKILL)
        _, err = ranks[0].communicate(timeout=180)  # a hang guard only, far above --dist-timeout 20
    finally:
        for p in ranks:
            p.kill()
    print(err)
    assert ranks[0].returncode == 1
    assert err.strip().splitlines() == [err.strip().splitlines()[-1]] and "Traceback" not in err, err
    # The collective that notices may be the per-step stop agreement or the gradient all-reduce.
    assert err.startswith("error: rank 0: lost the other processes during")
    assert not (tmp_path / "run" / "summary.json").exists()  # the run is not reported as finished
