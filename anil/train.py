"""Meta-train ANIL on a few-shot dataset, validate along the way, and meta-test at the end.

    python train.py                                   # built-in glyphs, 5-way 1-shot, minutes on a CPU
    python train.py --ways 20 --shots 5 --iterations 2000 --device cuda
    python train.py --data data/my-images             # any prepared dataset folder
    python train.py --resume runs/glyphs-5w1s         # continue an interrupted run, bit for bit
    torchrun --nproc_per_node=4 train.py --meta-batch 32 --device cuda   # data-parallel, 4 GPUs

Read ``train`` top to bottom: configuration, data, model, the meta-training loop, meta-test,
outputs. One iteration of the loop is one outer step — a meta-batch of tasks, each adapting the
head on its support set and scoring the query set (anil/algorithm.py; anil/fast.py computes the
same meta-gradient faster and is the default) — then validation, a log row and a checkpoint when
they are due (``end_of_iteration``). The run's state (``TrainState``) and its files
(``RunFolder``: checkpoint.pt, best.pt, model.pt, metrics.jsonl, curve.png, summary.json) live
in anil/run/, with checkpoints, torchrun and the command line (anil/run/config.py).

Ctrl-C or SIGTERM finishes the current step, writes checkpoint.pt and exits with 128 + signal
number (130, 143); a second Ctrl-C abandons the step at once, keeping the previous checkpoint.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from anil import algorithm, fast
from anil.data import DatasetError, load_split
from anil.evaluation import evaluate
from anil.model import ConvBody, make_head
from anil.run import checkpoint, distributed
from anil.run.cli import dataset_name, dataset_path, fail, set_threads
from anil.run.config import check_meta_batch_fits, parse_args, run_config
from anil.run.folder import RunFolder, RunFolderError
from anil.run.progress import Abandoned, GracefulStop, Progress, StopRequested, format_seconds
from anil.run.state import NonFiniteLoss, TrainState
from anil.sampler import SamplerError, TaskSampler, split_seed


def main(argv=None):
    """Parse the options and train; every way a run can end early gets a one-line message."""
    args = None
    try:
        args, resumed = parse_args(argv)
        return train(args, resumed)
    except Abandoned as e:  # a second Ctrl-C / SIGTERM: stop now, leave the last checkpoint alone
        saved = args is not None and (args.out / "checkpoint.pt").exists()
        print(f"\nstopped at once by a second {signal.Signals(e.signum).name}; "
              + (f"the last complete checkpoint is kept: resume with  python train.py --resume "
                 f"{args.out}" if saved else "no checkpoint had been written yet"), file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:  # before training began (e.g. while generating the dataset)
        print("\ninterrupted before training began; nothing was saved", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except (RunFolderError, distributed.DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, RunFolderError) else 1)


def train(args, resumed=None):
    """Meta-train (or continue the run ``resumed``), test, write the run folder; returns the summary."""
    # ------------------------------------------------------------------------ configuration
    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)
    threads = set_threads(args.threads)
    # Under torchrun each process adapts B/P tasks of every meta-batch and the gradients are
    # averaged (anil/run/distributed.py); alone, ctx.world_size == 1 and nothing changes.
    ctx = join_processes(args)
    device = ctx.device

    # ---------------------------------------------------------------------------------- data
    samplers, dataset = open_data(args, ctx, resumed)
    check_meta_batch_fits(args)

    # --------------------------------------------------------------------------------- model
    body, head = build_network(args, device)
    distributed.broadcast_parameters(ctx, [body, head])  # every process starts from rank 0's (θ, w)
    optimizer = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=args.outer_lr)
    step, features_fn = make_train_step(body, head, optimizer, args, ctx)
    print_setup(args, body, head, ctx, threads)

    stop = GracefulStop()
    run = Run(args, ctx, body, head, optimizer, samplers, RunFolder(args.out, writes=ctx.is_main),
              make_tester(body, head, args, ctx, features_fn, stop), run_config(args), dataset)
    with run.folder.open(resuming=resumed is not None, overwrite=args.overwrite), stop:
        state = start_or_resume(run, resumed)

        # ------------------------------------------------------------ the meta-training loop
        bar = Progress(args.iterations, "train", done=state.iteration)
        state.start_clock()
        try:
            if state.logged < state.iteration:  # stopped during that iteration's validation: redo it
                end_of_iteration(run, state, bar)
            while state.iteration < args.iterations:
                # Under torchrun every process must stop at the same iteration: agree first.
                if distributed.any_true(ctx, stop.signum is not None):
                    raise StopRequested(stop.signum or signal.SIGTERM)
                images, labels = distributed.next_meta_batch(samplers["train"], args.meta_batch, ctx)
                loss, accuracy = step(images.to(device), labels.to(device))
                state.record(loss, accuracy)
                bar.update(state.iteration)
                end_of_iteration(run, state, bar)
        except StopRequested as e:
            bar.clear()
            save_checkpoint(run, state)
            exit_stopped(e, f"at iteration {state.iteration}/{args.iterations}; wrote "
                            f"{run.folder.files['checkpoint.pt']}. Resume with:  python train.py "
                            f"--resume {args.out}")
        except NonFiniteLoss as e:
            bar.clear()
            exit_diverged(run, e)
        bar.clear()
        if args.iterations == 0:
            save_checkpoint(run, state)
        run.folder.save_weights("model.pt", {"iteration": state.iteration, **weights(body, head),
                                             "config": run.config})

        # ----------------------------------------------------------------------- meta-test
        tested = use_test_weights(run, state)
        start = time.perf_counter()
        try:
            mean, ci, _ = run.test(samplers["test"], args.eval_tasks, "test")
        except StopRequested as e:
            exit_stopped(e, f"during the final test; training is complete and saved: finish with"
                            f"  python train.py --resume {args.out}")
        print(f"test accuracy {100 * mean:.2f} ± {100 * ci:.2f}% (95% CI over {args.eval_tasks} "
              f"tasks, {args.test_inner_steps} inner steps; {tested['which']}; untrained "
              f"{100 * state.untrained['accuracy']:.2f}%; {time.perf_counter() - start:.1f}s)",
              flush=True)

        # ------------------------------------------------------------------------- outputs
        summary = {"config": run.config, "dataset": dataset, "world_size": ctx.world_size,
                   "test_accuracy": mean, "test_ci95": ci, "tested": tested["record"],
                   "untrained_test_accuracy": state.untrained["accuracy"],
                   "untrained_test_ci95": state.untrained["ci95"], "train_seconds": state.seconds(),
                   "history": run.folder.metrics.rows()}
        run.folder.draw_curve(state.best and state.best["iteration"], chance=1 / args.ways)
        run.folder.write_summary(summary)
        if ctx.is_main:
            print(f"wrote {', '.join(run.folder.written())} in {args.out}")
    distributed.teardown(ctx)
    return summary


# ------------------------------------------------------------------------------ the loop's parts


@dataclass
class Run:
    """What the loop's parts share: the settings and the objects made before the loop."""

    args: object
    ctx: distributed.Context
    body: torch.nn.Module
    head: torch.nn.Module
    optimizer: torch.optim.Optimizer
    samplers: dict
    folder: RunFolder
    test: object  # test(sampler, num_tasks, label) -> (mean, ci95, accuracies)
    config: dict
    dataset: dict


def end_of_iteration(run: Run, state: TrainState, bar: Progress) -> None:
    """After the step of iteration ``state.iteration``: validate, log, keep the best, checkpoint."""
    args, it = run.args, state.iteration
    last = it == args.iterations
    row = {"iteration": it}
    if args.val_every and (it % args.val_every == 0 or last):
        bar.clear()
        row["val_accuracy"], row["val_ci95"], _ = run.test(run.samplers["val"], args.val_tasks,
                                                           "validation")
        if state.validated(it, row["val_accuracy"], row["val_ci95"],
                           partial(weights, run.body, run.head)):
            run.folder.save_weights("best.pt", {**state.best, "config": run.config})
    if it % args.log_every == 0 or "val_accuracy" in row or last:
        row.update(state.take_window(), seconds=state.seconds())
        run.folder.log(row)
        left = state.eta(args.iterations)
        line = (f"iter {it:5d}/{args.iterations}  loss {row.get('loss', float('nan')):.3f}  "
                f"acc {100 * row.get('accuracy', float('nan')):5.1f}%  {row['seconds']:6.1f}s  "
                f"eta {format_seconds(left) if left != float('inf') else '?'}")
        if "val_accuracy" in row:
            line += f"  | val {100 * row['val_accuracy']:.1f} ± {100 * row['val_ci95']:.1f}%"
        bar.clear()
        print(line, flush=True)
    state.logged = it
    if (args.checkpoint_every and it % args.checkpoint_every == 0) or last:
        save_checkpoint(run, state)
        run.folder.draw_curve(state.best and state.best["iteration"], chance=1 / args.ways)


def save_checkpoint(run: Run, state: TrainState) -> None:
    run.folder.save_checkpoint({
        "kind": "checkpoint", **state.state_dict(), "config": run.config, "dataset": run.dataset,
        "body": run.body.state_dict(), "head": run.head.state_dict(),
        "optimizer": run.optimizer.state_dict(), "sampler": run.samplers["train"].state_dict(),
        "rng": checkpoint.rng_state()})


def weights(body, head) -> dict:
    """A copy of the current weights (on the CPU), for best.pt and model.pt."""
    return {"body": {k: v.detach().cpu().clone() for k, v in body.state_dict().items()},
            "head": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}}


# ------------------------------------------------------------------ set-up, before the loop


def join_processes(args) -> distributed.Context:
    try:
        ctx = distributed.setup(args.device, args.dist_timeout)
        distributed.share(args.meta_batch, ctx)  # B must be a multiple of the number of processes
    except distributed.DistributedError as e:
        fail(str(e))
    if not ctx.is_main:
        sys.stdout = open(os.devnull, "w")  # only rank 0 logs; errors still go to every stderr
    return ctx


def open_data(args, ctx, resumed):
    """The train/val/test samplers, and the dataset's identity (name, path, fingerprint)."""
    try:
        with distributed.main_first(ctx):  # the built-in dataset is generated by one process
            path = dataset_path(args)
        splits = {s: load_split(path, s) for s in ("train", "val", "test")}
        # Different seeds per split; validation and test tasks are fixed (ids 0..n-1).
        samplers = {s: TaskSampler(splits[s], args.ways, args.shots, seed=split_seed(args.seed, s),
                                   num_tasks=args.num_tasks if s == "train" else None,
                                   rotate=args.rotate)
                    for s in ("train", "val", "test")}
    except (DatasetError, SamplerError) as e:
        fail(str(e))
    channels, height, width = splits["train"].image_shape
    if args.data:  # any prepared dataset: the network follows its images
        if height != width:
            fail(f"{path} holds {height}x{width} images; the conv body needs square images "
                 f"(prepare them with --size)")
        args.channels, args.image_size = channels, height
    elif (channels, height, width) != (args.channels, args.image_size, args.image_size):
        fail(f"{path} holds {channels}x{height}x{width} images but the {args.dataset} preset expects "
             f"{args.channels}x{args.image_size}x{args.image_size}; prepare it again with: "
             + args.prepare.format(root=args.data_root))
    dataset = {"name": dataset_name(args), "path": str(path),
               "fingerprint": checkpoint.dataset_fingerprint(path)}
    if resumed and resumed["dataset"]["fingerprint"] != dataset["fingerprint"]:
        message = (f"--resume {args.resume}: the dataset at {path} (fingerprint "
                   f"{dataset['fingerprint']}) is not the one the run was trained on "
                   f"({resumed['dataset']['fingerprint']})")
        if not args.allow_config_change:
            fail(message + "; point --data-root (or --data) at the original data, or add "
                           "--allow-config-change")
        print(f"note: {message}; continuing as asked", flush=True)
    return samplers, dataset


def build_network(args, device):
    """The body f_θ and head w; a size that cannot be built is a one-line error."""
    try:
        body = ConvBody(args.channels, args.image_size, hidden=args.hidden).to(device)
        return body, make_head(body.feature_dim, args.ways).to(device)
    except ValueError as e:  # e.g. images too small for four pooling blocks
        fail(f"cannot build the network: {e}")
    except (MemoryError, RuntimeError) as e:  # e.g. --hidden 100000
        fail(f"cannot build a network with --hidden {args.hidden} ({str(e).splitlines()[0][:80]}); "
             f"use fewer filters")


def make_train_step(body, head, optimizer, args, ctx):
    """The training step, chosen once: the readable reference path (--strategy reference) or
    the fast path with its speed options; both average gradients across processes under
    torchrun. Returns step(images, labels) -> (loss, accuracy), and the body's feature function
    that evaluation shares."""
    average = ctx.average if ctx.distributed else None  # the gradient all-reduce
    options = dict(step_size=args.inner_lr, steps=args.inner_steps, first_order=args.first_order,
                   average=average, batch_norm=args.batch_norm)
    if args.strategy == "reference":
        speed = fast.Speed(head_loop=args.head_loop)  # evaluation: plain NCHW float32 body
        return (partial(algorithm.meta_train_step, body, head, optimizer, **options),
                fast.feature_extractor(body, speed, batch_norm=args.batch_norm))
    speed = fast.Speed(args.strategy, args.chunk_size, args.batch_body, args.precision,
                       args.channels_last, args.head_loop, compile_head=args.compile)
    features_fn = fast.feature_extractor(body, speed, compile=args.compile,
                                         batch_norm=args.batch_norm)
    return (partial(fast.train_step, body, head, optimizer, speed=speed, features_fn=features_fn,
                    **options), features_fn)


def make_tester(body, head, args, ctx, features_fn, stop):
    """test(sampler, num_tasks, label) -> (mean, ci95, accuracies) on tasks 0..n-1, with a
    progress bar; a stop request abandons it (it is redone on resume)."""
    def test(sampler, num_tasks, label):
        bar = Progress(num_tasks, label)

        def progress(done, total):
            stop.check()
            bar.update(done)

        body.eval(), head.eval()
        options = dict(features_fn=features_fn, head_loop=args.head_loop, progress=progress,
                       batch_norm=args.batch_norm)
        try:
            if ctx.distributed:  # each process scores every P-th task; accuracies gathered in order
                return distributed.evaluate_sharded(ctx, body, head, sampler, num_tasks,
                                                    args.inner_lr, args.test_inner_steps, **options)
            return evaluate(body, head, sampler, num_tasks, args.inner_lr, args.test_inner_steps,
                            ctx.device, **options)
        finally:
            bar.clear()
            body.train(), head.train()
    return test


def print_setup(args, body, head, ctx, threads) -> None:
    n_params = sum(p.numel() for p in [*body.parameters(), *head.parameters()])
    order = "first" if args.first_order else "second"
    print(f"ANIL on {dataset_name(args)}: {args.ways}-way {args.shots}-shot, meta-batch "
          f"{args.meta_batch}, α={args.inner_lr} × {args.inner_steps} steps ({args.test_inner_steps} "
          f"at test), {order} order, batch norm {args.batch_norm}, Adam β={args.outer_lr}, {args.iterations} iterations, "
          f"{n_params:,} parameters, device {ctx.device}"
          + (f" × {ctx.world_size} processes" if ctx.distributed else f", {threads} thread{'s' if threads > 1 else ''}"),
          flush=True)
    loop = ("torch.func (vmap ∘ grad ∘ functional_call)" if args.head_loop == "torch.func"
            else "closed form (linear head)")
    speed = ("the readable reference path (anil/algorithm.py)" if args.strategy == "reference" else
             f"strategy {args.strategy}{f' ({args.chunk_size} tasks)' if args.strategy == 'chunk' else ''}, "
             f"{'batched' if args.batch_body else 'per-task'} body, {args.precision}, "
             f"{'channels-last' if args.channels_last else 'NCHW'}{', compiled' if args.compile else ''}")
    print(f"head loop: {loop}, {order} order; {speed}", flush=True)


def start_or_resume(run: Run, resumed) -> TrainState:
    """A fresh run: test the untrained network (the baseline meta-training must beat). A
    resumed run: restore weights, optimizer, sampler, random states and the loop's state."""
    args = run.args
    if resumed is None:
        start = time.perf_counter()
        try:
            mean, ci, _ = run.test(run.samplers["test"], args.eval_tasks, "untrained test")
        except StopRequested as e:
            exit_stopped(e, "before training began; nothing to resume: run the command again")
        print(f"untrained network: test accuracy {100 * mean:.2f} ± {100 * ci:.2f}% over "
              f"{args.eval_tasks} tasks ({time.perf_counter() - start:.1f}s)", flush=True)
        return TrainState(untrained={"accuracy": mean, "ci95": ci})
    try:
        run.body.load_state_dict(resumed["body"])
        run.head.load_state_dict(resumed["head"])
        run.optimizer.load_state_dict(resumed["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        fail(f"--resume {args.resume}: the saved weights do not fit these settings "
             f"({str(e).splitlines()[0][:120]})")
    for group in run.optimizer.param_groups:  # the saved optimizer state holds the old β
        group["lr"] = args.outer_lr
    checkpoint.set_rng_state(resumed["rng"])
    run.samplers["train"].load_state_dict(resumed["sampler"])
    state = TrainState.from_state_dict(resumed)
    # Rows a killed process logged after its checkpoint, and damaged lines, are dropped; best.pt
    # may be newer than the checkpoint, so it is matched to it again.
    damaged = run.folder.truncate_metrics(state.logged)
    if damaged:
        print(f"note: dropped {damaged} damaged line(s) of metrics.jsonl", flush=True)
    run.folder.match_best(state.best, run.config)
    print(f"resuming {args.out} at iteration {state.iteration}/{args.iterations}"
          + (f" (best validation so far {100 * state.best['val_accuracy']:.2f}% at iteration "
             f"{state.best['iteration']})" if state.best else ""), flush=True)
    return state


def use_test_weights(run: Run, state: TrainState) -> dict:
    """Load the weights the final test uses (--test-weights); returns what to record of them."""
    best = state.best
    if run.args.test_weights == "best" and best is not None:
        run.body.load_state_dict(best["body"]), run.head.load_state_dict(best["head"])
        return {"record": {"weights": "best", "iteration": best["iteration"],
                           "val_accuracy": best["val_accuracy"]},
                "which": f"best validation {100 * best['val_accuracy']:.2f}% at iteration "
                         f"{best['iteration']}"}
    return {"record": {"weights": "last", "iteration": state.iteration},
            "which": f"weights of the last iteration, {state.iteration}"}


def exit_diverged(run: Run, e: NonFiniteLoss):
    """A nan/inf loss: the weights are lost, but the last checkpoint (if any) is good."""
    saved = run.folder.checkpoint_iteration
    fail(f"{e}; the weights are no longer usable and were not saved. Lower --outer-lr or "
         f"--inner-lr and start again" + (
             f", or continue from the last good checkpoint (iteration {saved}) with  python train.py "
             f"--resume {run.args.out} --outer-lr SMALLER --allow-config-change" if saved else ""))


def exit_stopped(e: StopRequested, what: str):
    print(f"stopped by {signal.Signals(e.signum).name} {what}", file=sys.stderr)
    sys.exit(128 + e.signum)


if __name__ == "__main__":
    main()
