"""Meta-train ANIL on a few-shot dataset, validate along the way, and meta-test at the end.

    python train.py                                   # built-in glyphs, 5-way 1-shot, ~2 min on CPU
    python train.py --ways 20 --shots 5 --iterations 2000 --device cuda
    python train.py --resume runs/glyphs-5w1s         # continue an interrupted run, bit for bit
    torchrun --nproc_per_node=4 train.py --meta-batch 32 --device cuda   # data-parallel, 4 GPUs

Reads top to bottom: configuration, data, model, meta-training loop (validation, best model,
metrics, checkpoints), meta-test, outputs. A run folder (--out) holds:

    checkpoint.pt   everything needed to resume (weights, optimizer, iteration, random states)
    best.pt         the weights with the best validation accuracy so far
    model.pt        the weights after the last iteration
    metrics.jsonl   one JSON row per logged iteration;  curve.png  the learning curve
    summary.json    configuration, test result, history

Ctrl-C or SIGTERM finishes the current step, writes checkpoint.pt and exits with 128 + signal
number (130, 143); a second Ctrl-C abandons the step at once, keeping the previous checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anil.run import checkpoint, distributed
from anil.algorithm import meta_train_step
from anil.run.checkpoint import CheckpointError
from anil.run.cli import (add_task_options, dataset_path, fail, non_negative_int, positive_float,
                      positive_int, resolve_device)
from anil.data import DatasetError, load_split
from anil.evaluation import evaluate
from anil.fast import Speed, default_speed, fast_evaluate, fast_meta_train_step, feature_extractor
from anil.run.metrics import MetricsLog, plot_learning_curve
from anil.model import ConvBody, make_head
from anil.run.presets import preset
from anil.run.progress import Abandoned, GracefulStop, Progress, StopRequested, eta, format_seconds
from anil.sampler import SamplerError, TaskSampler, split_seed

# ----------------------------------------------------------------------------- configuration

# Options that do not change what a run computes (its weights, validation and model selection):
# they may differ when resuming. Every other option must match the interrupted run.
FREE_ON_RESUME = {"data_root", "device", "out", "eval_tasks", "log_every", "checkpoint_every",
                  "test_weights", "dist_timeout"}
COMMANDS = {"resume", "allow_config_change"}  # what to do, not settings of the run
PATHS = {"data_root", "out"}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_task_options(p)
    p.add_argument("--num-tasks", type=positive_int, default=None,
                   help="fixed pool of training tasks (learn2learn's num_tasks); default: a fresh task per draw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    # Speed (anil/fast.py): none of these change the math; defaults are the fastest measured.
    p.add_argument("--strategy", choices=["task", "chunk", "vmap", "reference"],
                   help="tasks per head loop and body backward: 1, --chunk-size, or all; 'reference' "
                        "runs the readable anil.algorithm path (default: task on CPU, vmap on GPU)")
    p.add_argument("--chunk-size", type=positive_int, default=4, help="tasks per chunk for --strategy chunk")
    p.add_argument("--batch-body", action=argparse.BooleanOptionalAction, default=None,
                   help="one body call for all tasks of a chunk, per-task batch norm (default: on GPU only)")
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                   help="bfloat16: autocast of the body (opt-in; changes rounding)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last memory format for the conv body")
    p.add_argument("--compile", action="store_true", help="torch.compile the body (opt-in)")
    p.add_argument("--eval-tasks", type=positive_int, default=600, help="test tasks for the final result")
    p.add_argument("--val-tasks", type=positive_int, default=100, help="validation tasks per validation")
    p.add_argument("--val-every", type=non_negative_int, default=100, help="validate every V iterations (0: never)")
    p.add_argument("--test-weights", default="best", choices=["best", "last"],
                   help="final test with the best-validated weights or those of the last iteration")
    p.add_argument("--log-every", type=positive_int, default=25, help="print training progress every L iterations")
    p.add_argument("--checkpoint-every", type=non_negative_int, default=100,
                   help="write checkpoint.pt every M iterations (0: only at the end and when stopped)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<dataset>-<N>w<K>s)")
    p.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue the interrupted run in DIR with its saved settings")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: accept options that differ from the saved run (no longer bit-exact)")
    p.add_argument("--dist-timeout", type=positive_float, default=300.0,
                   help="under torchrun: seconds a process waits for the others before giving up")
    return p


def given_options(parser, argv):
    """The options written on the command line, as opposed to defaults and presets."""
    defaults = {a: a.default for a in parser._actions}
    for a in defaults:
        a.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(argv)))
    finally:
        for a, default in defaults.items():
            a.default = default


def run_config(args) -> dict:
    """The settings of a run as plain values (stored in checkpoints and summary.json)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
            if k not in COMMANDS}


def parse_args(argv=None):
    """The run's settings, and on --resume the checkpoint it continues from (else None)."""
    p = build_parser()
    args = p.parse_args(argv)
    for key, value in preset(args.dataset).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    resumed = None
    if args.resume is not None:
        resumed = resume_settings(p, args, argv)
    if args.out is None:
        args.out = Path("runs") / f"{args.dataset}-{args.ways}w{args.shots}s"
    args.device = resolve_device(args.device)
    if args.strategy == "reference" and (args.precision != "float32" or args.compile):
        p.error("--strategy reference runs the plain float32 path; drop --precision/--compile or pick "
                "another --strategy")
    fastest = default_speed(args.device)
    args.strategy = args.strategy or fastest.strategy
    args.batch_body = fastest.batch_body if args.batch_body is None else args.batch_body
    return args, resumed


def resume_settings(parser, args, argv) -> dict:
    """--resume DIR: take DIR's saved settings, except options given now; refuse any given option
    that would change what the run computes, naming each difference."""
    try:
        resumed = checkpoint.load(args.resume / "checkpoint.pt", kind="checkpoint")
    except CheckpointError as e:
        fail(f"--resume {args.resume}: {e}")
    saved, given = resumed["config"], given_options(parser, argv) - COMMANDS
    if args.out is not None and args.out.resolve() != args.resume.resolve():
        fail(f"--out {args.out} and --resume {args.resume} name different folders; drop --out")
    now = run_config(args)
    changed = checkpoint.config_differences(saved, now, keys=sorted(given - FREE_ON_RESUME))
    if changed and not args.allow_config_change:
        fail(f"--resume {args.resume}: the run was started with other settings: {'; '.join(changed)}. "
             f"Drop these options to continue the run exactly, or add --allow-config-change")
    if changed:
        print(f"note: resuming with changed settings ({'; '.join(changed)}); the result will not "
              f"equal that of an uninterrupted run", flush=True)
    for key, value in saved.items():
        if key not in given and key != "device":  # the device is this machine's choice
            setattr(args, key, Path(value) if key in PATHS and value is not None else value)
    args.out = args.resume
    return resumed


def main(argv=None):
    """Parse the options and train; an interrupt outside the graceful part gets a one-line message."""
    try:
        args, resumed = parse_args(argv)
        return train(args, resumed)
    except Abandoned as e:  # a second Ctrl-C / SIGTERM: stop now, leave the last checkpoint alone
        saved = (args.out / "checkpoint.pt").exists()
        print(f"\nstopped at once by a second {signal.Signals(e.signum).name}; "
              + (f"the last complete checkpoint is kept: resume with  python train.py --resume "
                 f"{args.out}" if saved else "no checkpoint had been written yet"), file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:  # before training began (e.g. while generating the dataset)
        print("\ninterrupted before training began; nothing was saved", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except distributed.DistributedError as e:  # a peer died or hung: exit non-zero, don't hang
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def train(args, resumed=None):
    """Meta-train (or continue the run ``resumed``), test, write the run folder; returns the summary."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    # ------------------------------------------------------------------ distributed (torchrun)
    # One process: ctx.world_size == 1 and everything below runs as plain single-process code.
    # Under torchrun: each process adapts B/P tasks of every meta-batch and the gradients are
    # averaged (anil/distributed.py); only rank 0 prints and writes the run folder.
    try:
        ctx = distributed.setup(args.device, args.dist_timeout)
        distributed.share(args.meta_batch, ctx)  # B must be a multiple of the number of processes
    except distributed.DistributedError as e:
        fail(str(e))
    if not ctx.is_main:
        sys.stdout = open(os.devnull, "w")  # only rank 0 logs; errors still go to every stderr
    device = ctx.device
    writes = ctx.is_main  # whether this process writes the run folder

    # ------------------------------------------------------------------------------- data
    try:
        with distributed.main_first(ctx):  # the built-in dataset is generated by one process
            path = dataset_path(args.dataset, args.data_root)
        splits = {s: load_split(path, s) for s in ("train", "val", "test")}
        # Different seeds per split; validation and test tasks are fixed (ids 0..n-1).
        samplers = {s: TaskSampler(splits[s], args.ways, args.shots, seed=split_seed(args.seed, s),
                                   num_tasks=args.num_tasks if s == "train" else None,
                                   rotate=args.rotate)
                    for s in ("train", "val", "test")}
    except (DatasetError, SamplerError) as e:
        fail(str(e))
    channels, height, width = splits["train"].image_shape
    if (channels, height, width) != (args.channels, args.image_size, args.image_size):
        fail(f"{path} holds {channels}x{height}x{width} images but the {args.dataset} preset expects "
             f"{args.channels}x{args.image_size}x{args.image_size}; prepare it again with: "
             + args.prepare.format(root=args.data_root))
    dataset = {"name": args.dataset, "fingerprint": checkpoint.dataset_fingerprint(path)}
    if resumed and resumed["dataset"] != dataset:
        message = (f"--resume {args.resume}: the dataset at {path} (fingerprint "
                   f"{dataset['fingerprint']}) is not the one the run was trained on "
                   f"({resumed['dataset']['fingerprint']})")
        if not args.allow_config_change:
            fail(message + "; point --data-root at the original data, or add --allow-config-change")
        print(f"note: {message}; continuing as asked", flush=True)

    # ------------------------------------------------------------------------------ model
    body = ConvBody(channels, height, hidden=args.hidden).to(device)
    head = make_head(body.feature_dim, args.ways).to(device)
    distributed.broadcast_parameters(ctx, [body, head])  # every process starts from rank 0's (θ, w)
    reference = args.strategy == "reference"
    speed = Speed("task" if reference else args.strategy, args.chunk_size, args.batch_body,
                  args.precision, args.channels_last and not reference)
    features_fn = feature_extractor(body, speed, compile=args.compile)
    optimizer = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=args.outer_lr)
    n_params = sum(p.numel() for p in [*body.parameters(), *head.parameters()])
    print(f"ANIL on {args.dataset}: {args.ways}-way {args.shots}-shot, meta-batch {args.meta_batch}, "
          f"α={args.inner_lr} × {args.inner_steps} steps ({args.test_inner_steps} at test), "
          f"{'first' if args.first_order else 'second'} order, Adam β={args.outer_lr}, "
          f"{args.iterations} iterations, {n_params:,} parameters, device {device}"
          + (f" × {ctx.world_size} processes" if ctx.distributed else ""), flush=True)
    print(f"speed: strategy {args.strategy}" + ("" if reference else
          f"{f' ({args.chunk_size} tasks)' if args.strategy == 'chunk' else ''}, "
          f"{'batched' if args.batch_body else 'per-task'} body, {args.precision}, "
          f"{'channels-last' if args.channels_last else 'NCHW'}{', compiled' if args.compile else ''}"),
          flush=True)

    # ------------------------------------------------------------------------ run folder
    out = args.out
    if writes:
        out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in ("checkpoint.pt", "best.pt", "model.pt", "metrics.jsonl",
                                           "curve.png", "summary.json")}
    metrics = MetricsLog(files["metrics.jsonl"])
    config = run_config(args)
    if resumed is None and files["checkpoint.pt"].exists():
        # Never silently overwrite a run that could still be resumed.
        try:
            old = checkpoint.load(files["checkpoint.pt"], kind="checkpoint")
            unfinished = old["iteration"] < old["config"]["iterations"]
            where = f"an interrupted run (iteration {old['iteration']}/{old['config']['iterations']})"
        except CheckpointError:
            unfinished, where = True, "an unreadable checkpoint.pt"
        if unfinished:
            fail(f"{out} holds {where}; resume it with  python train.py --resume {out}  , or use "
                 f"another --out, or delete {files['checkpoint.pt']} to start over")
    if resumed is None and writes:  # a fresh run replaces whatever an earlier run left in the folder
        for name in ("checkpoint.pt", "best.pt", "model.pt", "metrics.jsonl", "curve.png",
                     "summary.json"):
            files[name].unlink(missing_ok=True)

    stop = GracefulStop()

    def test(sampler, num_tasks, label):
        """Mean ± 95% CI accuracy on the sampler's first ``num_tasks`` tasks; a stop request
        abandons it (it is redone on resume)."""
        bar = Progress(num_tasks, label)

        def progress(done, total):
            stop.check()
            bar.update(done)

        body.eval(), head.eval()
        try:
            if ctx.distributed:  # each process scores every P-th task; accuracies gathered in order
                return distributed.evaluate_sharded(ctx, body, head, sampler, num_tasks,
                                                    args.inner_lr, args.test_inner_steps)
            if reference:
                return evaluate(body, head, sampler, num_tasks, args.inner_lr, args.test_inner_steps,
                                device, progress=progress)
            return fast_evaluate(body, head, sampler, num_tasks, args.inner_lr, args.test_inner_steps,
                                 device, features_fn=features_fn, progress=progress)
        finally:
            bar.clear()
            body.train(), head.train()

    def weights():
        return {"body": {k: v.detach().cpu().clone() for k, v in body.state_dict().items()},
                "head": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}}

    # The training state, all of which goes into checkpoint.pt.
    iteration = 0  # outer steps done
    bookkept = 0  # last iteration whose validation, log row and checkpoint are done
    best = None  # {"iteration", "val_accuracy", "val_ci95", "body", "head"} of the best validation
    window = {"loss": 0.0, "accuracy": 0.0, "count": 0}  # training metrics since the last log row
    seconds_before = 0.0  # training time spent by earlier processes of this run

    with stop:
        try:
            if resumed is None:
                # The untrained network on the same test tasks: what meta-training has to beat.
                start = time.perf_counter()
                mean, ci, _ = test(samplers["test"], args.eval_tasks, "untrained test")
                untrained = {"accuracy": mean, "ci95": ci}
                print(f"untrained network: test accuracy {100 * mean:.2f} ± {100 * ci:.2f}% "
                      f"over {args.eval_tasks} tasks ({time.perf_counter() - start:.1f}s)", flush=True)
            else:
                try:
                    body.load_state_dict(resumed["body"])
                    head.load_state_dict(resumed["head"])
                    optimizer.load_state_dict(resumed["optimizer"])
                except (RuntimeError, ValueError, KeyError) as e:
                    fail(f"--resume {args.resume}: the saved weights do not fit these settings "
                         f"({str(e).splitlines()[0][:120]})")
                for group in optimizer.param_groups:  # the saved optimizer state holds the old β
                    group["lr"] = args.outer_lr
                checkpoint.set_rng_state(resumed["rng"])
                samplers["train"].load_state_dict(resumed["sampler"])
                iteration, best, untrained = resumed["iteration"], resumed["best"], resumed["untrained"]
                window, seconds_before = resumed["window"], resumed["seconds"]
                bookkept = iteration - resumed["pending"]
                if writes:
                    metrics.truncate_after(bookkept)  # rows a killed process wrote after its checkpoint
                    if best is not None:  # best.pt may be newer than the checkpoint; match it again
                        checkpoint.save({"kind": "weights", **best, "config": config}, files["best.pt"])
                    else:
                        files["best.pt"].unlink(missing_ok=True)
                print(f"resuming {out} at iteration {iteration}/{args.iterations}"
                      + (f" (best validation so far {100 * best['val_accuracy']:.2f}% at iteration "
                         f"{best['iteration']})" if best else ""), flush=True)
        except StopRequested as e:
            print(f"stopped by {signal.Signals(e.signum).name} before training began; nothing to "
                  f"resume: run the command again", file=sys.stderr)
            sys.exit(128 + e.signum)

        # ------------------------------------------------------------------ meta-training
        def save_checkpoint():
            if not writes:
                return
            checkpoint.save({
                "kind": "checkpoint", "iteration": iteration, "pending": bookkept < iteration,
                "config": config, "dataset": dataset,
                "body": body.state_dict(), "head": head.state_dict(),
                "optimizer": optimizer.state_dict(), "sampler": samplers["train"].state_dict(),
                "rng": checkpoint.rng_state(), "best": best, "untrained": untrained,
                "window": window, "seconds": training_seconds(),
            }, files["checkpoint.pt"])

        def training_seconds():
            return seconds_before + time.perf_counter() - loop_start

        def draw_curve():
            rows = metrics.rows() if writes else []
            if rows:
                plot_learning_curve(rows, files["curve.png"], title=out.name,
                                    best_iteration=best and best["iteration"])

        def bookkeeping(it):
            """After the step of iteration ``it``: validate, log, keep the best, checkpoint."""
            nonlocal best, window, bookkept
            last = it == args.iterations
            row = {"iteration": it}
            if args.val_every and (it % args.val_every == 0 or last):
                bar.clear()
                row["val_accuracy"], row["val_ci95"], _ = test(samplers["val"], args.val_tasks,
                                                               "validation")
            if it % args.log_every == 0 or "val_accuracy" in row or last:
                if window["count"]:
                    row["loss"] = window["loss"] / window["count"]
                    row["accuracy"] = window["accuracy"] / window["count"]
                row["seconds"] = training_seconds()
                if writes:
                    metrics.append(row)
                window = {"loss": 0.0, "accuracy": 0.0, "count": 0}
                left = eta(time.perf_counter() - loop_start, it - first_iteration, args.iterations - it)
                line = (f"iter {it:5d}/{args.iterations}  loss {row.get('loss', float('nan')):.3f}  "
                        f"acc {100 * row.get('accuracy', float('nan')):5.1f}%  {row['seconds']:6.1f}s"
                        f"  eta {format_seconds(left) if it > first_iteration else '?'}")
                if "val_accuracy" in row:
                    line += f"  | val {100 * row['val_accuracy']:.1f} ± {100 * row['val_ci95']:.1f}%"
                bar.clear()
                print(line, flush=True)
            if "val_accuracy" in row and (best is None or row["val_accuracy"] > best["val_accuracy"]):
                best = {"iteration": it, "val_accuracy": row["val_accuracy"],
                        "val_ci95": row["val_ci95"], **weights()}
                if writes:
                    checkpoint.save({"kind": "weights", **best, "config": config}, files["best.pt"])
            bookkept = it
            if (args.checkpoint_every and it % args.checkpoint_every == 0) or last:
                save_checkpoint()
                draw_curve()

        first_iteration, loop_start = iteration, time.perf_counter()
        bar = Progress(args.iterations, "train", done=iteration)
        try:
            if bookkept < iteration:  # stopped during the validation of that iteration: redo it
                bookkeeping(iteration)
            while iteration < args.iterations:
                # Under torchrun every process must stop at the same iteration: agree first.
                if distributed.any_true(ctx, stop.signum is not None):
                    raise StopRequested(stop.signum or signal.SIGTERM)
                images, labels = distributed.next_meta_batch(samplers["train"], args.meta_batch, ctx)
                average = ctx.average if ctx.distributed else None  # gradient all-reduce
                if reference:
                    loss, acc = meta_train_step(body, head, optimizer, images.to(device),
                                                labels.to(device), args.inner_lr, args.inner_steps,
                                                args.first_order, average=average)
                else:
                    loss, acc = fast_meta_train_step(body, head, optimizer, images.to(device),
                                                     labels.to(device), args.inner_lr,
                                                     args.inner_steps, args.first_order, speed,
                                                     features_fn, average=average)
                iteration += 1
                window = {"loss": window["loss"] + loss, "accuracy": window["accuracy"] + acc,
                          "count": window["count"] + 1}
                bar.update(iteration)
                bookkeeping(iteration)
        except StopRequested as e:
            bar.clear()
            save_checkpoint()
            print(f"stopped by {signal.Signals(e.signum).name} at iteration {iteration}/"
                  f"{args.iterations}; wrote {files['checkpoint.pt']}. Resume with:  "
                  f"python train.py --resume {out}", file=sys.stderr)
            sys.exit(128 + e.signum)
        except OSError as e:
            fail(f"cannot write to {out} ({e}); the previous checkpoint is intact: make room and "
                 f"resume with  python train.py --resume {out}")
        bar.clear()
        if args.iterations == 0:
            save_checkpoint()
        train_seconds = training_seconds()
        if writes:
            checkpoint.save({"kind": "weights", "iteration": iteration, **weights(), "config": config},
                            files["model.pt"])

        # ------------------------------------------------------------------------- meta-test
        if args.test_weights == "best" and best is not None:
            body.load_state_dict(best["body"]), head.load_state_dict(best["head"])
            tested = {"weights": "best", "iteration": best["iteration"],
                      "val_accuracy": best["val_accuracy"]}
            which = (f"best validation {100 * best['val_accuracy']:.2f}% at iteration "
                     f"{best['iteration']}")
        else:
            tested = {"weights": "last", "iteration": iteration}
            which = f"weights of the last iteration, {iteration}"
        start = time.perf_counter()
        try:
            mean, ci, accuracies = test(samplers["test"], args.eval_tasks, "test")
        except StopRequested as e:
            print(f"stopped by {signal.Signals(e.signum).name} during the final test; training is "
                  f"complete and saved: finish with  python train.py --resume {out}", file=sys.stderr)
            sys.exit(128 + e.signum)
    print(f"test accuracy {100 * mean:.2f} ± {100 * ci:.2f}% (95% CI over {args.eval_tasks} tasks, "
          f"{args.test_inner_steps} inner steps; {which}; untrained "
          f"{100 * untrained['accuracy']:.2f}%; {time.perf_counter() - start:.1f}s)", flush=True)

    # --------------------------------------------------------------------------- outputs
    summary = {"config": config, "world_size": ctx.world_size, "test_accuracy": mean,
               "test_ci95": ci, "tested": tested, "untrained_test_accuracy": untrained["accuracy"],
               "untrained_test_ci95": untrained["ci95"], "train_seconds": train_seconds}
    if writes:  # every process holds the same weights and results; one writes them
        draw_curve()
        summary["history"] = metrics.rows()
        (files["summary.json"]).write_text(json.dumps(summary, indent=1))
        print(f"wrote {', '.join(name for name, f in files.items() if f.exists())} in {out}")
    distributed.teardown(ctx)
    return summary


if __name__ == "__main__":
    main()
