"""Meta-train ANIL on a few-shot dataset, validate along the way, and meta-test at the end.

    python train.py                                   # built-in glyphs, 5-way 1-shot, minutes on a CPU
    python train.py --ways 20 --shots 5 --iterations 2000 --device cuda
    python train.py --data data/my-images             # any prepared dataset folder
    python train.py --resume runs/glyphs-5w1s         # continue an interrupted run, bit for bit
    torchrun --nproc_per_node=4 train.py --meta-batch 32 --device cuda   # data-parallel, 4 GPUs

Read ``train`` top to bottom: configuration, data, model, the meta-training loop, meta-test.
The loop (``meta_train``) writes out each outer step as the paper's outer loop: 1. sample a
meta-batch of tasks, 2. zero the gradients, 3. compute the meta-gradient — either
``algorithm.meta_loss(...).backward()`` (the readable reference: per task, the body, then
``adapt_head`` on the support set and the query loss) or ``fast.meta_gradient(...)`` (the same
gradient, faster; the default) — 4. average it across processes (torchrun), 5.
``optimizer.step()``. Then validation, a log row and a checkpoint when due (``end_of_iteration``).
The run's state (``TrainState``) and files (``RunFolder``: checkpoint.pt, best.pt, model.pt,
metrics.jsonl, curve.png, summary.json) live in anil/run/, with checkpoints, torchrun and the
command line (anil/run/config.py).

Ctrl-C or SIGTERM finishes the current step, writes checkpoint.pt and exits with 128 + signal
number (130, 143); a second Ctrl-C abandons the step at once, keeping the previous checkpoint.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch

from anil import algorithm, fast
from anil.data import what_to_test_on
from anil.evaluation import evaluate
from anil.model import ConvBody, make_head
from anil.run import checkpoint, distributed
from anil.run.cli import fail, memory_error, out_of_memory, path_error, set_threads
from anil.run.config import check_meta_batch_fits, parse_args, run_config
from anil.run.run_folder import RunFolder, RunFolderError
from anil.run.metrics import curve_marks
from anil.run.setup import join_processes, open_data, print_setup
from anil.run.progress import (Abandoned, GracefulStop, Progress, StopRequested, exit_diverged,
                               exit_stopped, format_seconds)
from anil.run.results import ResultsError, write_results
from anil.run.state import NonFiniteLoss, TrainState
from anil.sampler import TaskSampler


def main(argv=None):
    """Parse the options and train; every way a run can end early gets a one-line message.
    Returns None, so the ``anil-train`` script's ``sys.exit(main())`` exits 0 after a run
    (``train`` returns the summary)."""
    args = None
    try:
        args, resumed = parse_args(argv)
        train(args, resumed)
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
    except OSError as e:  # a path given (--out, --data-root, ...) that cannot be used
        path_error(e)
    except (MemoryError, RuntimeError) as e:  # e.g. --meta-batch 4096 --strategy vmap
        if args is None or not out_of_memory(e):
            raise
        kept = (args.out / "checkpoint.pt").exists()
        memory_error(e, f"lower --meta-batch (now {args.meta_batch}), use --strategy chunk with a "
                        f"smaller --chunk-size, or a smaller --hidden" + (
                            f"; the last checkpoint is kept: python train.py --resume {args.out} "
                            f"--meta-batch SMALLER --allow-config-change" if kept else ""))


def train(args, resumed=None):
    """Meta-train (or continue the run ``resumed``), test, write the run folder; returns the summary."""
    # ------------------------------------------------------------------------ configuration
    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)
    threads = set_threads(args.threads)
    # Under torchrun each process adapts B/P tasks of every meta-batch and the gradients are
    # averaged (anil/run/distributed.py); alone, ctx.world_size == 1 and nothing changes.
    ctx = join_processes(args)

    # ---------------------------------------------------------------------------------- data
    samplers, dataset = open_data(args, ctx, resumed)
    check_meta_batch_fits(args)

    # --------------------------------------------------------------------------------- model
    body, head = build_network(args, ctx.device)
    distributed.broadcast_parameters(ctx, [body, head])  # every process starts from rank 0's (θ, w)
    optimizer = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=args.outer_lr)
    speed, features_fn = choose_speed(body, args)
    print_setup(args, body, head, ctx, threads)

    stop = GracefulStop()
    run = Run(args, ctx, body, head, optimizer, speed, features_fn, samplers,
              RunFolder(args.out, writes=ctx.is_main), run_config(args), dataset,
              make_tester(body, head, args, ctx, features_fn, stop))
    with run.folder.open(resuming=resumed is not None, overwrite=args.overwrite), stop:
        state = start_or_resume(run, resumed)
        meta_train(run, state, stop)
        summary = meta_test(run, state)
    distributed.teardown(ctx)
    return summary


def meta_train(run: Run, state: TrainState, stop: GracefulStop) -> None:
    """The outer loop, from ``state.iteration`` to --iterations: one outer step per iteration
    (docs/design.md, "The outer loop and the meta-gradient"), then validation, a log row and a
    checkpoint when they are due (``end_of_iteration``)."""
    args, ctx, body, head, optimizer = run.args, run.ctx, run.body, run.head, run.optimizer
    inner = dict(step_size=args.inner_lr, steps=args.inner_steps, first_order=args.first_order,
                 batch_norm=args.batch_norm)
    bar = Progress(args.iterations, "train", done=state.iteration)
    state.start_clock()
    try:
        if state.finished < state.iteration:  # stopped during that iteration's validation: redo it
            end_of_iteration(run, state, bar)
        while state.iteration < args.iterations:
            # Under torchrun every process must stop at the same iteration: agree first.
            if distributed.any_true(ctx, stop.signum is not None):
                raise StopRequested(stop.signum or signal.SIGTERM)
            # 1. a meta-batch of B tasks, images [B, 2NK, C, H, W] (under torchrun, B/P of them)
            images, labels = distributed.next_meta_batch(run.samplers["train"], args.meta_batch, ctx)
            images, labels = images.to(ctx.device), labels.to(ctx.device)
            # 2. zero the gradients
            optimizer.zero_grad(set_to_none=True)
            # 3. the meta-gradient ∇_(θ,w) (1/B) Σ_i L(Q_i; θ, w_i^(m)) into .grad: the readable
            #    reference (--strategy reference), or the same gradient computed faster
            if run.speed is None:
                loss, accuracy = algorithm.meta_loss(body, head, images, labels, **inner)
                loss.backward()
            else:
                loss, accuracy = fast.meta_gradient(body, head, images, labels, **inner,
                                                    speed=run.speed, features_fn=run.features_fn)
            # 4. the mean of the processes' gradients (alone: nothing to average)
            loss, accuracy = distributed.average_gradients(ctx, run.parameters(), loss, accuracy)
            # 5. (θ, w) ← Adam step with learning rate β
            optimizer.step()
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
        exit_diverged(e, run.folder.checkpoint_iteration, args.out)
    bar.clear()
    if args.iterations == 0:
        save_checkpoint(run, state)
    run.folder.save_weights("model.pt", {"iteration": state.iteration, **weights(body, head),
                                         "config": run.config})


def meta_test(run: Run, state: TrainState) -> dict:
    """Test the chosen weights (--test-weights) on the test tasks; write the summary and curve."""
    args, ctx = run.args, run.ctx
    mean = ci = tested = None
    if "test" not in run.samplers:  # a dataset tested on fixed episodes (open_data said so)
        print(f"no test split: test the run on {what_to_test_on(run.dataset['path'], args.out)}", flush=True)
    else:
        tested = use_test_weights(run, state)
        start = time.perf_counter()
        try:
            mean, ci, _ = run.test(run.samplers["test"], args.eval_tasks, "test")
        except StopRequested as e:
            exit_stopped(e, f"during the final test; training is complete and saved: finish with"
                            f"  python train.py --resume {args.out}")
        print(f"test accuracy {100 * mean:.2f} ± {100 * ci:.2f}% (95% CI over {args.eval_tasks} "
              f"tasks, {args.test_inner_steps} inner steps; {tested['which']}; untrained "
              f"{100 * state.untrained['accuracy']:.2f}%; {time.perf_counter() - start:.1f}s)",
              flush=True)
    untrained = state.untrained or {"accuracy": None, "ci95": None}  # None: no test split
    summary = {"config": run.config, "dataset": run.dataset, "world_size": ctx.world_size,
               "test_accuracy": mean, "test_ci95": ci, "tested": tested and tested["record"],
               "untrained_test_accuracy": untrained["accuracy"],
               "untrained_test_ci95": untrained["ci95"], "train_seconds": state.seconds(),
               "history": run.folder.metrics.rows()}
    run.folder.draw_curve(state.best and state.best["iteration"], chance=1 / args.ways,
                          **curve_marks(run.config, state.untrained,
                                        tested and (mean, ci, tested["record"]["iteration"])))
    run.folder.write_summary(summary)
    if ctx.is_main:
        print(f"wrote {', '.join(run.folder.written())} in {args.out}")
        if getattr(args, "results", None):  # the figures docs/ quote (anil/run/results.py)
            try:
                print(f"wrote {write_results(args.results, summary, ctx.device)}")
            except ResultsError as e:
                fail(str(e))
    return summary


# ------------------------------------------------------------------------------ the loop's parts


@dataclass
class Run:
    """What the loop's parts share: the settings and the objects made before the loop."""

    args: argparse.Namespace
    ctx: distributed.Context
    body: torch.nn.Module
    head: torch.nn.Module
    optimizer: torch.optim.Optimizer
    speed: fast.Speed | None  # the fast path's options; None: the readable reference path
    features_fn: Callable[[torch.Tensor], torch.Tensor]  # Z = f_θ(X), shared with evaluation
    samplers: dict[str, TaskSampler]  # "train", "val", "test"
    folder: RunFolder
    config: dict  # what summary.json and the checkpoints record of args
    dataset: dict  # {"name", "path", "fingerprint"}
    test: Callable[[TaskSampler, int, str], tuple[float, float, list]]  # see make_tester

    def parameters(self) -> list[torch.Tensor]:
        return [*self.body.parameters(), *self.head.parameters()]


def end_of_iteration(run: Run, state: TrainState, bar: Progress) -> None:
    """After the step of iteration ``state.iteration``: validate, log, keep the best, checkpoint."""
    args, it = run.args, state.iteration
    last = it == args.iterations
    row = {"iteration": it}
    if args.val_every and (it % args.val_every == 0 or last):
        bar.clear()
        row["val_accuracy"], row["val_ci95"], _ = run.test(run.samplers["val"], args.val_tasks,
                                                           "validation")
        if state.keep_if_best(it, row["val_accuracy"], row["val_ci95"],
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
    state.finished = it
    if (args.checkpoint_every and it % args.checkpoint_every == 0) or last:
        save_checkpoint(run, state)
        run.folder.draw_curve(state.best and state.best["iteration"], chance=1 / args.ways,
                              **curve_marks(run.config, state.untrained))


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


def choose_speed(body, args):
    """The fast path's options (None for --strategy reference) and the body's feature function
    Z = f_θ(X) that training and evaluation share (channels-last and compiled when asked)."""
    if args.strategy == "reference":  # the readable path; evaluation: plain NCHW float32 body
        return None, fast.feature_extractor(body, fast.Speed(head_loop=args.head_loop),
                                            batch_norm=args.batch_norm)
    speed = fast.Speed(args.strategy, args.chunk_size, args.batch_body, args.precision,
                       args.channels_last, args.head_loop, compile_head=args.compile)
    return speed, fast.feature_extractor(body, speed, compile=args.compile,
                                         batch_norm=args.batch_norm)


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


def start_or_resume(run: Run, resumed) -> TrainState:
    """A fresh run: test the untrained network (the baseline meta-training must beat), and
    validate it as iteration 0 of the learning curve. A resumed run: restore weights,
    optimizer, sampler, random states and the loop's state."""
    args = run.args
    if resumed is None:
        start, untrained, row = time.perf_counter(), None, {"iteration": 0, "seconds": 0.0}
        try:
            if "test" in run.samplers:  # else no untrained test either (open_data said so)
                mean, ci, _ = run.test(run.samplers["test"], args.eval_tasks, "untrained test")
                untrained = {"accuracy": mean, "ci95": ci}
            if args.val_every:  # the curve's first point; not a candidate for best.pt
                row["val_accuracy"], row["val_ci95"], _ = run.test(run.samplers["val"],
                                                                   args.val_tasks, "validation")
                run.folder.log(row)
        except StopRequested as e:
            exit_stopped(e, "before training began; nothing to resume: run the command again")
        if untrained:
            print(f"untrained network: test accuracy {100 * mean:.2f} ± {100 * ci:.2f}% over "
                  f"{args.eval_tasks} tasks" + (f", validation {100 * row['val_accuracy']:.1f}%"
                                                 if "val_accuracy" in row else "")
                  + f" ({time.perf_counter() - start:.1f}s)", flush=True)
        return TrainState(untrained=untrained)
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
    damaged = run.folder.truncate_metrics(state.finished)
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


if __name__ == "__main__":
    main()
