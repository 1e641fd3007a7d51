"""Train ANIL, first-order ANIL and MAML with the same data, seed and budget, then print the
paper-style table: test accuracy for ANIL, first-order ANIL, MAML and NIL (the head dropped, on
each trained body and on the untrained one), and the time per training iteration and per test
task, with MAML/ANIL ratios.

Two different "±" are reported, each labelled. Per seed: the 95% confidence interval of the mean
over the test tasks, x̄ ± 1.96 s/√n (``anil.evaluation.mean_ci95``). With ``--seeds N`` (N ≥ 2):
the mean and standard deviation over the N training runs (seeds --seed, --seed+1, ...), the
paper's form ("mean and standard deviation of performance over three random initializations",
Raghu et al. 2020, on its results tables). The first measures test-task sampling noise only;
the second also the spread between training runs.

Within a seed all methods start from the same initial weights and see the same training tasks in
the same order; they are tested on the same test tasks, one task at a time for every method (so
the timings compare the algorithms, not batching). Outputs in --out: anil.pt and maml.pt of the
first seed (weights and config; ``python -m anil.paper.analysis`` and ``anil.load_run`` read
them), summary.json, and compare.png (accuracy bars). ``--results FILE`` also writes the figures
with the command line, versions, date and device (``anil.run.results``); docs/ quotes that file.
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
                          dataset_name, dataset_path, fail, path_error, positive_int, program,
                          resolve_device, set_threads, user_error)
from anil.run.run_folder import RunFolder, RunFolderError, fresh_name
from anil.run.plot import bar_chart
from anil.run.results import ResultsError, write_results
from anil.sampler import SamplerError, TaskSampler, split_seed

# Second-order MAML costs about ten ANIL steps on a CPU (docs/paper.md), so the built-in dataset's
# comparison uses a smaller budget than train.py (the values below; --help shows them). Other
# datasets use their presets unchanged.
QUICK = {"glyphs": dict(hidden=32, meta_batch=4, iterations=200)}
OUTPUTS = ("anil.pt", "maml.pt", "summary.json", "compare.png")
EXAMPLES = """examples:
  python -m anil.paper.compare                                  built-in glyphs, minutes on a CPU
  python -m anil.paper.compare --seeds 3 --results docs/results/compare.json   the docs' figures
  python -m anil.paper.compare --dataset omniglot --iterations 5000 --device cuda
  python -m anil.paper.analysis --checkpoint runs/compare-glyphs-5w1s/maml.pt   then analyse"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program("python -m anil.paper.compare"), formatter_class=HelpFormatter,
        description=__doc__.split("\n\n")[0], epilog=EXAMPLES)
    add_task_options(p, iterations_type=positive_int, overrides=QUICK)  # the same for all methods
    add_device_options(p, speed=False)
    out = p.add_argument_group("test and outputs")
    out.add_argument("--seeds", type=positive_int, default=1,
                     help="train and test every method with seeds --seed, --seed+1, ...; with 2 "
                          "or more, also report the mean ± standard deviation over seeds")
    out.add_argument("--eval-tasks", type=positive_int, default=300, help="test tasks per method")
    out.add_argument("--log-every", type=positive_int, default=25,
                     help="print training progress every L iterations")
    out.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="output folder (default: runs/compare-<dataset>-<N>w<K>s, or a fresh "
                          "-2, -3, ... if that holds an earlier comparison)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace the comparison in --out (default: refuse to touch it)")
    out.add_argument("--results", type=Path, default=None, metavar="FILE",
                     help="also write the figures, with this command line, versions, date and "
                          "device, to FILE (e.g. docs/results/compare.json, which docs/ quotes)")
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
    """Meta-train one method from the shared initial weights; returns body, head, step times.
    ``step_fn(body, head, optimizer, images, labels, α, steps)`` is one outer step."""
    body, head = init()
    optimizer = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=args.outer_lr)
    sampler = make_sampler()  # a fresh sampler: both methods see the same task sequence
    step_seconds = []
    for it in range(1, args.iterations + 1):
        images, labels = sampler.batch(args.meta_batch)
        images, labels = images.to(device), labels.to(device)
        start = time.perf_counter()
        loss, acc = step_fn(body, head, optimizer, images, labels, args.inner_lr, args.inner_steps,
                            batch_norm=args.batch_norm)
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
    """``anil-compare``: returns None, so ``sys.exit(main())`` exits 0 (see ``run``)."""
    try:
        run(parse_args(argv))
    except OSError as e:  # --out or --data-root cannot be used
        path_error(e)


def run(args) -> dict:
    """Compare with the parsed ``args``; returns the summary (summary.json's contents)."""
    device = torch.device(args.device)
    set_threads(args.threads)
    # All or nothing: the outputs appear together once all are written (a full disk leaves none).
    folder = RunFolder(args.out, names=OUTPUTS, all_or_nothing=True)
    start = time.perf_counter()
    try:
        with folder.open(resuming=False, overwrite=args.overwrite):  # before minutes of training
            summary = compare(args, device, folder)
    except RunFolderError as e:
        fail(str(e))
    if args.results is not None:
        try:
            config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            write_results(args.results, {"config": config, **summary,
                                         "wall_seconds": time.perf_counter() - start}, device)
        except ResultsError as e:
            fail(str(e))
        print(f"wrote {args.results}")
    return summary


def load_data(args):
    """The train and test splits and a sampler factory per split for ``seed``; checks ways and
    shots and the image shape now, before any training."""
    try:
        path = dataset_path(args)
        splits = {s: load_split(path, s) for s in ("train", "test")}
        sampler = lambda split, seed: TaskSampler(splits[split], args.ways, args.shots,
                                                  seed=split_seed(seed, split), rotate=args.rotate)
        for split in splits:
            sampler(split, args.seed)
    except (DatasetError, SamplerError) as e:
        fail(user_error(e))
    channels, height, width = splits["train"].image_shape
    if height != width:
        fail(f"{path}: images are {height}x{width}; the conv body expects square images")
    args.channels, args.image_size = channels, height  # recorded in the config of anil.pt/maml.pt
    return sampler


def compare(args, device, folder):
    sampler = load_data(args)
    seeds = list(range(args.seed, args.seed + args.seeds))
    order = "first" if args.first_order else "second"
    print(f"ANIL vs MAML on {dataset_name(args)}: {args.ways}-way {args.shots}-shot, meta-batch "
          f"{args.meta_batch}, α={args.inner_lr} × {args.inner_steps} steps ({args.test_inner_steps} "
          f"at test), {order} order, batch norm {args.batch_norm}, Adam β={args.outer_lr}, "
          f"{args.iterations} iterations each, "
          f"{args.hidden} filters, seed{'s' if len(seeds) > 1 else ''} "
          f"{', '.join(map(str, seeds))}, {args.eval_tasks} test tasks, device {device}, "
          f"ANIL head loop {args.head_loop}", flush=True)
    per_seed, first_models = {}, None
    for seed in seeds:
        if len(seeds) > 1:
            print(f"seed {seed}", flush=True)
        models, rows = compare_one_seed(args, seed, sampler, device)
        per_seed[seed] = report(rows, args, f"seed {seed}")
        first_models = first_models or models
    summary = {"seeds": seeds, "per_seed": per_seed, "rows": per_seed[seeds[0]]["rows"],
               "train_speedup": per_seed[seeds[0]]["train_speedup"],
               "test_speedup": per_seed[seeds[0]]["test_speedup"]}
    if len(seeds) > 1:
        summary["over_seeds"] = over_seeds(per_seed, args)
    write_outputs(args, folder, first_models, summary)
    return summary


def compare_one_seed(args, seed, sampler, device):
    """Train ANIL, first-order ANIL (unless all is first order) and MAML from one initial network
    drawn with ``seed``, on the same training tasks; test every row. Returns (models, rows)."""
    torch.manual_seed(seed)
    try:
        body0 = ConvBody(args.channels, args.image_size, hidden=args.hidden)
    except ValueError as e:  # e.g. images too small for four pooling blocks
        fail(f"cannot build the network: {e}")
    head0 = make_head(body0.feature_dim, args.ways)

    def init():
        body = ConvBody(args.channels, args.image_size, hidden=args.hidden)
        head = make_head(body0.feature_dim, args.ways)
        body.load_state_dict(body0.state_dict()), head.load_state_dict(head0.state_dict())
        return body.to(device), head.to(device)

    # ANIL task by task, like MAML: the body once per task (ANIL's saving), the head loop as chosen.
    anil_speed = fast.Speed("task", head_loop=args.head_loop)
    anil_step = partial(fast.train_step, speed=anil_speed)
    methods = [("ANIL", anil_step, args.first_order)]
    if not args.first_order:  # what the second-order term buys, in accuracy and in time
        methods.append(("ANIL (1st order)", anil_step, True))
    methods.append(("MAML", maml.meta_train_step, args.first_order))
    models, step_times = {"untrained": init()}, {}
    for name, step_fn, first_order in methods:
        body, head, seconds = train(name, partial(step_fn, first_order=first_order), init,
                                    partial(sampler, "train", seed), args, device)
        models[name], step_times[name] = (body, head), seconds
    rows = test_all(models, step_times, sampler("test", seed), args, device, anil_speed)
    return models, rows


def over_seeds(per_seed: dict, args) -> dict:
    """Per method: mean and sample standard deviation (ddof = 1) over seeds of the per-seed test
    accuracy, the paper's "±"; the same for the MAML/ANIL time ratios."""
    def mean_std(values):
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values)}

    runs = list(per_seed.values())
    table = {m: mean_std([r["rows"][m]["accuracy"] for r in runs]) for m in runs[0]["rows"]}
    result = {"accuracy": table, "train_speedup": mean_std([r["train_speedup"] for r in runs]),
              "test_speedup": mean_std([r["test_speedup"] for r in runs])}
    print(f"\nover {len(runs)} seeds: test accuracy, mean ± standard deviation over seeds "
          f"(the paper's ±; each seed's 95% CI over test tasks is above)")
    for method, v in table.items():
        print(f"{method:<17} {100 * v['mean']:>14.2f} ± {100 * v['std']:5.2f}%")
    print(f"ANIL is {result['train_speedup']['mean']:.1f}x (± {result['train_speedup']['std']:.1f}) "
          f"faster per training iteration and {result['test_speedup']['mean']:.1f}x (± "
          f"{result['test_speedup']['std']:.1f}) faster per test task than MAML")
    return result


def write_outputs(args, folder, models, summary):
    """anil.pt and maml.pt (the first seed's), summary.json and compare.png in --out."""
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
              if k != "overwrite"}
    for name in ("ANIL", "MAML"):
        body, head = models[name]
        folder.save(f"{name.lower()}.pt", {"kind": "weights", "body": body.state_dict(),
                                           "head": head.state_dict(),
                                           "config": {**config, "algorithm": name.lower(),
                                                      "seed": summary["seeds"][0]}})
    folder.write_json("summary.json", {"config": config, **summary})
    rows = summary["rows"]
    labels = list(rows)
    folder.write_png("compare.png", lambda png: bar_chart(
        png, labels, {"test accuracy": [100 * rows[m]["accuracy"] for m in labels]},
        errors={"test accuracy": [100 * rows[m]["ci95"] for m in labels]},
        title=f"{dataset_name(args)} {args.ways}-way {args.shots}-shot, seed {summary['seeds'][0]}: "
              f"{args.iterations} training iterations, {args.eval_tasks} test tasks (95% CI)",
        ylabel="test accuracy", ylim=(0, 100), chance=100 / args.ways, tick_format="{:g}%",
        value_format="{value:.1f} ± {error:.1f}%"))
    folder.commit()
    print(f"wrote {args.out}/anil.pt, maml.pt, summary.json, compare.png")


def test_all(models, step_times, test, args, device, anil_speed) -> dict:
    """Test ANIL, MAML and NIL on the same tasks, one task at a time; one row per method."""
    alpha, steps, n, bn = args.inner_lr, args.test_inner_steps, args.eval_tasks, args.batch_norm
    anil_test = lambda b, h: evaluate(b, h, test, n, alpha, steps, device,
                                      fast.feature_extractor(b, anil_speed, batch_norm=bn),
                                      args.head_loop, tasks_per_call=1, batch_norm=bn)
    tests = {
        "ANIL": ("ANIL", anil_test),
        "ANIL (1st order)": ("ANIL (1st order)", anil_test),
        "MAML": ("MAML", lambda b, h: maml.evaluate(b, h, test, n, alpha, steps, device,
                                                    batch_norm=bn)),
        "NIL (ANIL body)": ("ANIL", lambda b, h: nil.evaluate(b, test, n, device, bn)),
        "NIL (MAML body)": ("MAML", lambda b, h: nil.evaluate(b, test, n, device, bn)),
        # The untrained body: what meta-training adds to the features.
        "NIL (untrained)": ("untrained", lambda b, h: nil.evaluate(b, test, n, device, bn)),
    }
    rows = {}
    for method, (trained, fn) in tests.items():
        if trained not in models:
            continue
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


def report(rows: dict, args, title: str) -> dict:
    """Print one seed's table and the MAML/ANIL time ratios; returns them for summary.json."""
    anil_row, maml_row = rows["ANIL"], rows["MAML"]
    train_ratio = maml_row["train_seconds_per_iteration"] / anil_row["train_seconds_per_iteration"]
    test_ratio = maml_row["test_seconds_per_task"] / anil_row["test_seconds_per_task"]
    print(f"\n{title}: test accuracy ± 95% CI over {args.eval_tasks} test tasks")
    print(f"{'method':<17} {'trained as':<16} {'test accuracy (95% CI)':>23} "
          f"{'s / train iter':>15} {'ms / test task':>15}")
    for method, r in rows.items():
        it = r.get("train_seconds_per_iteration")
        it_text = f"{it:.3f}" if it is not None else "—"
        print(f"{method:<17} {r['trained_as']:<16} {100 * r['accuracy']:>14.2f} ± "
              f"{100 * r['ci95']:5.2f}% {it_text:>15} {1000 * r['test_seconds_per_task']:>15.1f}")
    print(f"ANIL is {train_ratio:.1f}x faster per training iteration and {test_ratio:.1f}x faster per "
          f"test task than MAML (paper: 1.7x and 4.1x)")
    return {"rows": rows, "train_speedup": train_ratio, "test_speedup": test_ratio}


if __name__ == "__main__":
    main()
