"""Train ANIL and MAML with the same data, seed and budget, then print the paper-style table:
test accuracy ± 95% CI for ANIL, MAML and NIL (the head dropped, on each trained body and on the
untrained one), and the time per training iteration and per test task, with MAML/ANIL ratios.

    python -m anil.paper.compare                                   # built-in glyphs, minutes on a CPU
    python -m anil.paper.compare --dataset omniglot --iterations 5000 --device cuda

Both models start from the same initial weights and see the same training tasks in the same
order; they are tested on the same test tasks. Outputs in --out: anil.pt and maml.pt (weights and
config; ``python -m anil.paper.analysis`` reads them), summary.json, and compare.png (accuracy bars).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from anil import algorithm, evaluation
from anil.paper import maml, nil
from anil.run.cli import add_task_options, dataset_path, fail, positive_int, resolve_device
from anil.data import DatasetError, load_split
from anil.model import ConvBody, make_head
from anil.run.plot import bar_chart
from anil.run.presets import preset
from anil.sampler import SamplerError, TaskSampler

# Second-order MAML costs ~10-15x an ANIL step on a CPU (see README), so the built-in dataset's
# comparison uses a smaller budget than train.py: 32 filters, 4 tasks per step, 200 steps.
# Other datasets use their presets unchanged.
QUICK = {"glyphs": dict(hidden=32, meta_batch=4, iterations=200)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m anil.paper.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_task_options(p, iterations_type=positive_int)  # both methods get the same settings
    p.add_argument("--seed", type=int, default=0, help="seed for the shared initial weights and tasks")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--eval-tasks", type=positive_int, default=300, help="test tasks per method")
    p.add_argument("--log-every", type=positive_int, default=25)
    p.add_argument("--out", type=Path, default=None, help="default runs/compare-<dataset>-<N>w<K>s")
    args = p.parse_args(argv)
    defaults = {**preset(args.dataset), **QUICK.get(args.dataset, {})}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = Path("runs") / f"compare-{args.dataset}-{args.ways}w{args.shots}s"
    args.device = resolve_device(args.device)
    return args


def train(name, step_fn, init, samplers, args, device):
    """Meta-train one method from the shared initial weights; returns body, head, step times."""
    body, head = init()
    optimizer = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=args.outer_lr)
    sampler = samplers["train"]()  # a fresh sampler: both methods see the same task sequence
    step_seconds = []
    for it in range(1, args.iterations + 1):
        images, labels = sampler.batch(args.meta_batch)
        images, labels = images.to(device), labels.to(device)
        start = time.perf_counter()
        loss, acc = step_fn(body, head, optimizer, images, labels, args.inner_lr, args.inner_steps,
                            args.first_order)
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_seconds.append(time.perf_counter() - start)
        if it % args.log_every == 0 or it == args.iterations:
            print(f"  {name} iter {it:5d}/{args.iterations}  loss {loss:.3f}  acc {100 * acc:5.1f}%  "
                  f"{sum(step_seconds):6.1f}s", flush=True)
    return body, head, step_seconds


def timed(fn):
    """(result, seconds) of fn()."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)

    # ------------------------------------------------------------------------------- data
    try:
        path = dataset_path(args.dataset, args.data_root)
        splits = {s: load_split(path, s) for s in ("train", "test")}
        samplers = {s: (lambda s=s, i=i: TaskSampler(splits[s], args.ways, args.shots,
                                                      seed=args.seed * 3 + i, rotate=args.rotate))
                    for i, s in ((0, "train"), (2, "test"))}
        test = samplers["test"]()
        samplers["train"]()  # validate ways/shots against the training split now
    except (DatasetError, SamplerError) as e:
        fail(str(e))
    channels, height, width = splits["train"].image_shape
    if height != width:
        fail(f"{path}: images are {height}x{width}; the conv body expects square images")

    # ------------------------------------------------------------------------ shared init
    torch.manual_seed(args.seed)
    body0 = ConvBody(channels, height, hidden=args.hidden)
    head0 = make_head(body0.feature_dim, args.ways)

    def init():
        body, head = ConvBody(channels, height, hidden=args.hidden), make_head(body0.feature_dim, args.ways)
        body.load_state_dict(body0.state_dict()), head.load_state_dict(head0.state_dict())
        return body.to(device), head.to(device)

    order = "first" if args.first_order else "second"
    print(f"ANIL vs MAML on {args.dataset}: {args.ways}-way {args.shots}-shot, meta-batch "
          f"{args.meta_batch}, α={args.inner_lr} × {args.inner_steps} steps ({args.test_inner_steps} "
          f"at test), {order} order, Adam β={args.outer_lr}, {args.iterations} iterations each, "
          f"{args.hidden} filters, seed {args.seed}, {args.eval_tasks} test tasks, device {device}",
          flush=True)

    # --------------------------------------------------------------------- meta-training
    models, step_times = {"untrained": init()}, {}
    for name, step_fn in (("ANIL", algorithm.meta_train_step), ("MAML", maml.meta_train_step)):
        body, head, seconds = train(name, step_fn, init, samplers, args, device)
        models[name], step_times[name] = (body, head), seconds

    # ------------------------------------------------------------------------- meta-test
    alpha, steps, n = args.inner_lr, args.test_inner_steps, args.eval_tasks
    tests = {
        "ANIL": ("ANIL", lambda b, h: evaluation.evaluate(b, h, test, n, alpha, steps, device)),
        "MAML": ("MAML", lambda b, h: maml.evaluate(b, h, test, n, alpha, steps, device)),
        "NIL (ANIL body)": ("ANIL", lambda b, h: nil.evaluate(b, test, n, device)),
        "NIL (MAML body)": ("MAML", lambda b, h: nil.evaluate(b, test, n, device)),
        # The untrained body: what meta-training adds to the features.
        "NIL (untrained)": ("untrained", lambda b, h: nil.evaluate(b, test, n, device)),
    }
    rows = {}
    for method, (trained, fn) in tests.items():
        body, head = models[trained]
        body.eval(), head.eval()
        (mean, ci, _), seconds = timed(lambda: fn(body, head))
        rows[method] = {"trained_as": trained, "accuracy": mean, "ci95": ci,
                        "test_seconds_per_task": seconds / n}
        if method in step_times:
            # Median: robust to other processes stealing the CPU for a moment.
            rows[method]["train_seconds_per_iteration"] = statistics.median(step_times[method])
        print(f"  tested {method}: {100 * mean:.2f} ± {100 * ci:.2f}% ({seconds:.1f}s)", flush=True)

    # ---------------------------------------------------------------------------- table
    anil_row, maml_row = rows["ANIL"], rows["MAML"]
    train_ratio = maml_row["train_seconds_per_iteration"] / anil_row["train_seconds_per_iteration"]
    test_ratio = maml_row["test_seconds_per_task"] / anil_row["test_seconds_per_task"]
    print()
    print(f"{'method':<17} {'trained as':<10} {'test accuracy (95% CI)':>23} "
          f"{'s / train iter':>15} {'ms / test task':>15}")
    for method, r in rows.items():
        it = r.get("train_seconds_per_iteration")
        it_text = f"{it:.3f}" if it is not None else "—"
        print(f"{method:<17} {r['trained_as']:<10} {100 * r['accuracy']:>14.2f} ± {100 * r['ci95']:5.2f}% "
              f"{it_text:>15} {1000 * r['test_seconds_per_task']:>15.1f}")
    print(f"ANIL is {train_ratio:.1f}x faster per training iteration and {test_ratio:.1f}x faster per "
          f"test task than MAML (paper: 1.7x and 4.1x)")

    # --------------------------------------------------------------------------- outputs
    args.out.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    for name, (body, head) in models.items():
        if name == "untrained":
            continue
        torch.save({"body": body.state_dict(), "head": head.state_dict(),
                    "config": {**config, "algorithm": name.lower()}}, args.out / f"{name.lower()}.pt")
    summary = {"config": config, "rows": rows, "train_speedup": train_ratio, "test_speedup": test_ratio}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    labels = list(rows)
    bar_chart(args.out / "compare.png", labels,
              {"test accuracy": [100 * rows[m]["accuracy"] for m in labels]},
              errors={"test accuracy": [100 * rows[m]["ci95"] for m in labels]},
              title=f"{args.dataset} {args.ways}-way {args.shots}-shot: {args.iterations} training "
                    f"iterations, {args.eval_tasks} test tasks",
              ylabel="test accuracy", ylim=(0, 100), chance=100 / args.ways, tick_format="{:g}%",
              value_format="{value:.1f} ± {error:.1f}%")
    print(f"wrote {args.out}/anil.pt, maml.pt, summary.json, compare.png")
    return summary


if __name__ == "__main__":
    main()
