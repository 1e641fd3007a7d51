"""Meta-train ANIL on a few-shot dataset, validate along the way, and meta-test at the end.

    python train.py                                   # built-in glyphs, 5-way 1-shot, ~5 min on CPU
    python train.py --ways 20 --shots 5 --iterations 2000 --device cuda

Reads top to bottom: configuration, data, model, meta-training loop, evaluation, outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anil.algorithm import meta_train_step
from anil.data import DatasetError, load_split
from anil.evaluate import evaluate
from anil.fast import Speed, default_speed, fast_evaluate, fast_meta_train_step, feature_extractor
from anil.model import ConvBody, make_head
from anil.presets import PRESETS, preset
from anil.sampler import SamplerError, TaskSampler

# ----------------------------------------------------------------------------- configuration


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="glyphs", choices=sorted(PRESETS),
                   help="dataset; its preset sets every default marked 'preset'")
    p.add_argument("--data-root", type=Path, default=Path("data"), help="folder of prepared datasets")
    p.add_argument("--ways", type=positive_int, help="N classes per task (preset)")
    p.add_argument("--shots", type=positive_int, help="K support (and K query) images per class (preset)")
    p.add_argument("--meta-batch", type=positive_int, help="tasks per outer step (preset)")
    p.add_argument("--inner-lr", type=positive_float, help="inner step size α (preset)")
    p.add_argument("--inner-steps", type=non_negative_int, help="inner steps while training (preset)")
    p.add_argument("--test-inner-steps", type=non_negative_int, help="inner steps at val/test (preset)")
    p.add_argument("--outer-lr", type=positive_float, help="Adam learning rate β (preset)")
    p.add_argument("--iterations", type=non_negative_int, help="outer steps (preset)")
    p.add_argument("--first-order", action="store_true", help="first-order ANIL (no Hessian terms)")
    p.add_argument("--hidden", type=positive_int, help="conv filters per block (preset)")
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
    p.add_argument("--log-every", type=positive_int, default=25, help="print training progress every L iterations")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<dataset>-<N>w<K>s)")
    args = p.parse_args(argv)
    for key, value in preset(args.dataset).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = Path("runs") / f"{args.dataset}-{args.ways}w{args.shots}s"
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here; use --device cpu")
    if args.strategy == "reference" and (args.precision != "float32" or args.compile):
        p.error("--strategy reference runs the plain float32 path; drop --precision/--compile or pick "
                "another --strategy")
    fastest = default_speed(args.device)
    args.strategy = args.strategy or fastest.strategy
    args.batch_body = fastest.batch_body if args.batch_body is None else args.batch_body
    return args


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def load_dataset(args):
    """The prepared dataset's folder; the built-in one is generated on first use."""
    path = args.data_root / args.dataset
    if args.dataset == "glyphs":
        from data_prep.glyphs import ensure
        return ensure(args.data_root, seed=0)
    if not (path / "meta.json").is_file():
        fail(f"no prepared {args.dataset} dataset at {path}; prepare it with: "
             + args.prepare.format(root=args.data_root))
    return path


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device(args.device)

    # ------------------------------------------------------------------------------- data
    try:
        path = load_dataset(args)
        splits = {s: load_split(path, s) for s in ("train", "val", "test")}
        # Different seeds per split; validation and test tasks are fixed (ids 0..n-1).
        samplers = {s: TaskSampler(splits[s], args.ways, args.shots, seed=args.seed * 3 + i,
                                   num_tasks=args.num_tasks if s == "train" else None,
                                   rotate=args.rotate)
                    for i, s in enumerate(("train", "val", "test"))}
    except (DatasetError, SamplerError) as e:
        fail(str(e))
    channels, height, width = splits["train"].image_shape
    if height != width:
        fail(f"{path}: images are {height}x{width}; the conv body expects square images")

    # ------------------------------------------------------------------------------ model
    body = ConvBody(channels, height, hidden=args.hidden).to(device)
    head = make_head(body.feature_dim, args.ways).to(device)
    reference = args.strategy == "reference"
    speed = Speed("task" if reference else args.strategy, args.chunk_size, args.batch_body,
                  args.precision, args.channels_last and not reference)
    features_fn = feature_extractor(body, speed, compile=args.compile)
    optimizer = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=args.outer_lr)
    n_params = sum(p.numel() for p in [*body.parameters(), *head.parameters()])
    print(f"ANIL on {args.dataset}: {args.ways}-way {args.shots}-shot, meta-batch {args.meta_batch}, "
          f"α={args.inner_lr} × {args.inner_steps} steps ({args.test_inner_steps} at test), "
          f"{'first' if args.first_order else 'second'} order, Adam β={args.outer_lr}, "
          f"{args.iterations} iterations, {n_params:,} parameters, device {device}", flush=True)
    print(f"speed: strategy {args.strategy}" + ("" if reference else
          f"{f' ({args.chunk_size} tasks)' if args.strategy == 'chunk' else ''}, "
          f"{'batched' if args.batch_body else 'per-task'} body, {args.precision}, "
          f"{'channels-last' if args.channels_last else 'NCHW'}{', compiled' if args.compile else ''}"),
          flush=True)

    def test(sampler, num_tasks):
        body.eval(), head.eval()
        if reference:
            result = evaluate(body, head, sampler, num_tasks, args.inner_lr, args.test_inner_steps, device)
        else:
            result = fast_evaluate(body, head, sampler, num_tasks, args.inner_lr, args.test_inner_steps,
                                   device, features_fn=features_fn)
        body.train(), head.train()
        return result

    # The untrained network on the same test tasks: what meta-training has to beat.
    start = time.perf_counter()
    untrained, untrained_ci, _ = test(samplers["test"], args.eval_tasks)
    print(f"untrained network: test accuracy {100 * untrained:.2f} ± {100 * untrained_ci:.2f}% "
          f"over {args.eval_tasks} tasks ({time.perf_counter() - start:.1f}s)", flush=True)

    # ---------------------------------------------------------------------- meta-training
    history, start = [], time.perf_counter()
    for it in range(1, args.iterations + 1):
        images, labels = samplers["train"].batch(args.meta_batch)
        if reference:
            loss, acc = meta_train_step(body, head, optimizer, images.to(device), labels.to(device),
                                        args.inner_lr, args.inner_steps, args.first_order)
        else:
            loss, acc = fast_meta_train_step(body, head, optimizer, images.to(device), labels.to(device),
                                             args.inner_lr, args.inner_steps, args.first_order, speed,
                                             features_fn)
        row = {"iteration": it, "loss": loss, "accuracy": acc}
        if args.val_every and (it % args.val_every == 0 or it == args.iterations):
            row["val_accuracy"], row["val_ci95"], _ = test(samplers["val"], args.val_tasks)
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        if it % args.log_every == 0 or "val_accuracy" in row or it == args.iterations:
            line = (f"iter {it:5d}/{args.iterations}  loss {loss:.3f}  acc {100 * acc:5.1f}%  "
                    f"{row['seconds']:6.1f}s")
            if "val_accuracy" in row:
                line += f"  | val {100 * row['val_accuracy']:.1f} ± {100 * row['val_ci95']:.1f}%"
            print(line, flush=True)
    train_seconds = time.perf_counter() - start

    # ------------------------------------------------------------------------- meta-test
    start = time.perf_counter()
    mean, ci, accuracies = test(samplers["test"], args.eval_tasks)
    print(f"test accuracy {100 * mean:.2f} ± {100 * ci:.2f}% (95% CI over {args.eval_tasks} tasks, "
          f"{args.test_inner_steps} inner steps; untrained {100 * untrained:.2f}%; "
          f"{time.perf_counter() - start:.1f}s)", flush=True)

    # --------------------------------------------------------------------------- outputs
    args.out.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    torch.save({"body": body.state_dict(), "head": head.state_dict(), "config": config},
               args.out / "model.pt")
    summary = {"config": config, "test_accuracy": mean, "test_ci95": ci,
               "untrained_test_accuracy": untrained, "untrained_test_ci95": untrained_ci,
               "train_seconds": train_seconds, "history": history}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out / 'summary.json'} and {args.out / 'model.pt'}")
    return summary


if __name__ == "__main__":
    main()
