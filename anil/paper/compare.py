"""Train ANIL and MAML with the same data, seed and budget, then print the paper-style table:
test accuracy ± 95% CI for ANIL, MAML and NIL (the head dropped, on each trained body and on the
untrained one), and the time per training iteration and per test task, with MAML/ANIL ratios.

Both models start from the same initial weights and see the same training tasks in the same
order; they are tested on the same test tasks, one task at a time for both (so the timings
compare the algorithms, not batching). Outputs in --out: anil.pt and maml.pt (weights and
config; ``python -m anil.paper.analysis`` and ``anil.load_run`` read them), summary.json, and
compare.png (accuracy bars).
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from anil import fast
from anil.data import DatasetError, load_split
from anil.evaluation import evaluate
from anil.model import ConvBody, make_head
from anil.paper import maml, nil
from anil.run.cli import (HelpFormatter, add_device_options, add_task_options, apply_preset,
                          dataset_name, dataset_path, fail, user_error, positive_int, program, resolve_device,
                          set_threads)
from anil.run.run_folder import RunFolder, RunFolderError, fresh_name
from anil.run.plot import bar_chart
from anil.sampler import SamplerError, TaskSampler, split_seed

# Second-order MAML costs ~10-15x an ANIL step on a CPU (docs/paper.md), so the built-in
# dataset's comparison uses a smaller budget than train.py: 32 filters, 4 tasks per step, 200
# steps. Other datasets use their presets unchanged.
QUICK = {"glyphs": dict(hidden=32, meta_batch=4, iterations=200)}
OUTPUTS = ("anil.pt", "maml.pt", "summary.json", "compare.png")
EXAMPLES = """examples:
  python -m anil.paper.compare                                  built-in glyphs, minutes on a CPU
  python -m anil.paper.compare --dataset omniglot --iterations 5000 --device cuda
  python -m anil.paper.analysis --checkpoint runs/compare-glyphs-5w1s/maml.pt   then analyse"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program("python -m anil.paper.compare"), formatter_class=HelpFormatter,
        description=__doc__.split("\n\n")[0], epilog=EXAMPLES)
    add_task_options(p, iterations_type=positive_int)  # both methods get the same settings
    add_device_options(p, speed=False)
    out = p.add_argument_group("test and outputs")
    out.add_argument("--eval-tasks", type=positive_int, default=300, help="test tasks per method")
    out.add_argument("--log-every", type=positive_int, default=25,
                     help="print training progress every L iterations")
    out.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="output folder (default: runs/compare-<dataset>-<N>w<K>s, or a fresh "
                          "-2, -3, ... if that holds an earlier comparison)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace the comparison in --out (default: refuse to touch it)")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    apply_preset(args, None if args.data else QUICK.get(args.dataset or "glyphs"))
    if args.out is None:
        args.out = fresh_name(Path("runs") / f"compare-{dataset_name(args)}-{args.ways}w{args.shots}s",
                              OUTPUTS)
    args.device = resolve_device(args.device)
    return args


def train(name, step_fn, init, make_sampler, args, device):
    """Meta-train one method from the shared initial weights; returns body, head, step times."""
    body, head = init()
    optimizer = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=args.outer_lr)
    sampler = make_sampler()  # a fresh sampler: both methods see the same task sequence
    step_seconds = []
    for it in range(1, args.iterations + 1):
        images, labels = sampler.batch(args.meta_batch)
        images, labels = images.to(device), labels.to(device)
        start = time.perf_counter()
        loss, acc = step_fn(body, head, optimizer, images, labels, args.inner_lr, args.inner_steps,
                            args.first_order, batch_norm=args.batch_norm)
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
    set_threads(args.threads)
    folder = RunFolder(args.out, names=OUTPUTS)
    try:
        with folder.open(resuming=False, overwrite=args.overwrite):  # before minutes of training
            return compare(args, device, folder)
    except RunFolderError as e:
        fail(str(e))


def compare(args, device, folder):
    # ------------------------------------------------------------------------------- data
    try:
        path = dataset_path(args)
        splits = {s: load_split(path, s) for s in ("train", "test")}
        samplers = {s: partial(TaskSampler, splits[s], args.ways, args.shots,
                               seed=split_seed(args.seed, s), rotate=args.rotate)
                    for s in ("train", "test")}
        test = samplers["test"]()
        samplers["train"]()  # validate ways/shots against the training split now
    except (DatasetError, SamplerError) as e:
        fail(user_error(e))
    channels, height, width = splits["train"].image_shape
    if height != width:
        fail(f"{path}: images are {height}x{width}; the conv body expects square images")
    args.channels, args.image_size = channels, height  # recorded in the config of anil.pt/maml.pt

    # ------------------------------------------------------------------------ shared init
    torch.manual_seed(args.seed)
    try:
        body0 = ConvBody(channels, height, hidden=args.hidden)
    except ValueError as e:  # e.g. images too small for four pooling blocks
        fail(f"cannot build the network: {e}")
    head0 = make_head(body0.feature_dim, args.ways)

    def init():
        body, head = ConvBody(channels, height, hidden=args.hidden), make_head(body0.feature_dim, args.ways)
        body.load_state_dict(body0.state_dict()), head.load_state_dict(head0.state_dict())
        return body.to(device), head.to(device)

    order = "first" if args.first_order else "second"
    print(f"ANIL vs MAML on {dataset_name(args)}: {args.ways}-way {args.shots}-shot, meta-batch "
          f"{args.meta_batch}, α={args.inner_lr} × {args.inner_steps} steps ({args.test_inner_steps} "
          f"at test), {order} order, batch norm {args.batch_norm}, Adam β={args.outer_lr}, "
          f"{args.iterations} iterations each, "
          f"{args.hidden} filters, seed {args.seed}, {args.eval_tasks} test tasks, device {device}, "
          f"ANIL head loop {args.head_loop}", flush=True)

    # --------------------------------------------------------------------- meta-training
    # ANIL task by task, like MAML: the body once per task (ANIL's saving), the head loop as chosen.
    anil_speed = fast.Speed("task", head_loop=args.head_loop)
    anil_step = partial(fast.train_step, speed=anil_speed)
    models, step_times = {"untrained": init()}, {}
    for name, step_fn in (("ANIL", anil_step), ("MAML", maml.meta_train_step)):
        body, head, seconds = train(name, step_fn, init, samplers["train"], args, device)
        models[name], step_times[name] = (body, head), seconds

    # ------------------------------------------------------------------------- meta-test
    rows = test_all(models, step_times, test, args, device, anil_speed)
    summary = report(rows, args)

    # --------------------------------------------------------------------------- outputs
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
              if k != "overwrite"}
    for name in ("ANIL", "MAML"):
        body, head = models[name]
        folder.save(f"{name.lower()}.pt", {"kind": "weights", "body": body.state_dict(),
                                           "head": head.state_dict(),
                                           "config": {**config, "algorithm": name.lower()}})
    folder.write_json("summary.json", {"config": config, **summary})
    labels = list(rows)
    folder.write_png("compare.png", lambda png: bar_chart(
        png, labels, {"test accuracy": [100 * rows[m]["accuracy"] for m in labels]},
        errors={"test accuracy": [100 * rows[m]["ci95"] for m in labels]},
        title=f"{dataset_name(args)} {args.ways}-way {args.shots}-shot: {args.iterations} training "
              f"iterations, {args.eval_tasks} test tasks",
        ylabel="test accuracy", ylim=(0, 100), chance=100 / args.ways, tick_format="{:g}%",
        value_format="{value:.1f} ± {error:.1f}%"))
    print(f"wrote {args.out}/anil.pt, maml.pt, summary.json, compare.png")
    return summary


def test_all(models, step_times, test, args, device, anil_speed) -> dict:
    """Test ANIL, MAML and NIL on the same tasks, one task at a time; one row per method."""
    alpha, steps, n, bn = args.inner_lr, args.test_inner_steps, args.eval_tasks, args.batch_norm
    tests = {
        "ANIL": ("ANIL", lambda b, h: evaluate(b, h, test, n, alpha, steps, device,
                                               fast.feature_extractor(b, anil_speed, batch_norm=bn),
                                               args.head_loop, tasks_per_call=1, batch_norm=bn)),
        "MAML": ("MAML", lambda b, h: maml.evaluate(b, h, test, n, alpha, steps, device,
                                                    batch_norm=bn)),
        "NIL (ANIL body)": ("ANIL", lambda b, h: nil.evaluate(b, test, n, device, bn)),
        "NIL (MAML body)": ("MAML", lambda b, h: nil.evaluate(b, test, n, device, bn)),
        # The untrained body: what meta-training adds to the features.
        "NIL (untrained)": ("untrained", lambda b, h: nil.evaluate(b, test, n, device, bn)),
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
    return rows


def report(rows: dict, args) -> dict:
    """Print the table and the MAML/ANIL time ratios; returns them for summary.json."""
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
    return {"rows": rows, "train_speedup": train_ratio, "test_speedup": test_ratio}


if __name__ == "__main__":
    main()
