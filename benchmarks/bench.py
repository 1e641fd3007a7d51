"""Side-by-side speed of ANIL training steps and evaluation, in one process, alternating runs.

    python benchmarks/bench.py            # full run (a few minutes on 2 CPU cores)
    python benchmarks/bench.py --quick    # under a minute: smaller meta-batches, fewer repeats
    python benchmarks/bench.py --device cuda --json results.json

For each configuration it times, on the same random images (timings do not depend on the data):

  reference    learn2learn-style: per task, body forward, a cloned head adapted with
               torch.autograd.grad(create_graph=True), query loss backward; average; Adam step.
               NCHW float32. Written here, independently of anil.fast.
  ours         anil.fast.train_step in each strategy (task / chunk / vmap), in float32 and
               bfloat16 autocast, channels-last (and one NCHW float32 row), with the torch.func
               head loop (the default; "func") and its closed form ("closed").
  supervised   a plain forward + backward + Adam step of the same backbone and a linear
               classifier over the same images: one task-sized batch at a time ("per task") and
               all images in one batch; NCHW and channels-last. The practical lower bound.
  eval         600 tasks: the reference style (per task, graph alive, create_graph head
               adaptation) against anil.evaluation.task_accuracies (inference mode, 8 tasks a
               call), with each head loop.

--head-loops times only what the choice of head loop decides: the default speed and the
task-by-task strategy, each with the torch.func and the closed-form head loop (with --compile
also the compiled torch.func head loop, and its compilation time), on the four configurations.

Every variant runs once to warm up, then the variants take turns (round-robin) for the timed
repeats, so a slow phase of a shared machine hits all of them alike. Reported: median time, peak
memory above what was allocated before the step (CUDA: torch.cuda.max_memory_allocated; CPU:
the allocator's events recorded by torch.profiler in a separate, untimed run), and the ratios
ours/reference and ours/(best float32 supervised). A variant that fails prints an error row.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a fresh clone, uninstalled

from anil.evaluation import task_accuracies  # noqa: E402
from anil.fast import Speed, default_speed, feature_extractor, train_step  # noqa: E402
from anil.model import ConvBody, make_head  # noqa: E402
from anil.run.results import write_results  # noqa: E402

CONFIGS = [
    # name, N ways, K shots, channels, image side, meta-batch B, inner steps, inner step size α
    dict(name="5w5s 32x32x3 B=32", ways=5, shots=5, channels=3, size=32, meta_batch=32, steps=5, alpha=0.1),
    dict(name="5w1s 84x84x3 B=4", ways=5, shots=1, channels=3, size=84, meta_batch=4, steps=5, alpha=0.01),
    dict(name="20w1s 28x28x1 B=16", ways=20, shots=1, channels=1, size=28, meta_batch=16, steps=5, alpha=0.1),
    # the default `python train.py` run's shape
    dict(name="5w1s 28x28x1 B=8", ways=5, shots=1, channels=1, size=28, meta_batch=8, steps=5, alpha=0.5),
]
EVAL_TASKS = 600
EVAL_TASKS_PER_CALL = 8  # tasks per body call and per vmapped head loop


# ------------------------------------------------------------------------ the reference style


def reference_step(body, head, optimizer, images, labels, alpha, steps):
    """learn2learn's ANIL step, written out: one task at a time, a differentiable clone of the
    head adapted with create_graph=True, each task's query loss backpropagated, then averaged."""
    optimizer.zero_grad(set_to_none=True)
    for x, y in zip(images, labels):
        z = body(x)
        w, b = head.weight.clone(), head.bias.clone()  # learner = head.clone()
        for _ in range(steps):                           # learner.adapt(support loss)
            support_loss = F.cross_entropy(F.linear(z[0::2], w, b), y[0::2])
            gw, gb = torch.autograd.grad(support_loss, (w, b), create_graph=True)
            w, b = w - alpha * gw, b - alpha * gb
        query_loss = F.cross_entropy(F.linear(z[1::2], w, b), y[1::2])
        query_loss.backward()
    for p in [*body.parameters(), *head.parameters()]:
        p.grad.mul_(1.0 / len(images))
    optimizer.step()


def reference_accuracy(body, head, x, y, alpha, steps):
    """learn2learn-style evaluation of one task: the same code as training, graph and all."""
    z = body(x)
    w, b = head.weight.clone(), head.bias.clone()
    for _ in range(steps):
        support_loss = F.cross_entropy(F.linear(z[0::2], w, b), y[0::2])
        gw, gb = torch.autograd.grad(support_loss, (w, b), create_graph=True)
        w, b = w - alpha * gw, b - alpha * gb
    return (F.linear(z[1::2], w, b).argmax(1) == y[1::2]).float().mean().item()


def supervised_step(body, classifier, optimizer, images, labels, per_task, channels_last):
    """The lower bound: a plain supervised step of the same backbone over the same images."""
    optimizer.zero_grad(set_to_none=True)
    groups = zip(images, labels) if per_task else [(images.flatten(0, 1), labels.flatten())]
    for x, y in groups:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        F.cross_entropy(classifier(body(x)), y).backward()
    optimizer.step()


# ----------------------------------------------------------------------------- measurement


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_memory(fn, device) -> float:
    """Peak bytes allocated during fn() above what was allocated when it started."""
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def random_tasks(cfg, count, device, generator):
    m = 2 * cfg["ways"] * cfg["shots"]
    images = torch.rand(count, m, cfg["channels"], cfg["size"], cfg["size"], generator=generator)
    labels = torch.arange(cfg["ways"]).repeat_interleave(2 * cfg["shots"]).repeat(count, 1)
    return images.to(device), labels.to(device)


def build_variants(cfg, device, quick, compile_body, head_loops_only=False):
    """name → (kind, callable running one step or one full evaluation)."""
    torch.manual_seed(0)
    base_body = ConvBody(cfg["channels"], cfg["size"]).to(device)
    base_head = make_head(base_body.feature_dim, cfg["ways"]).to(device)
    generator = torch.Generator().manual_seed(0)
    images, labels = random_tasks(cfg, cfg["meta_batch"], device, generator)
    eval_images, eval_labels = random_tasks(cfg, EVAL_TASKS_PER_CALL, device, generator)
    alpha, steps = cfg["alpha"], cfg["steps"]

    def fresh(channels_last=False):
        body, head = copy.deepcopy(base_body), copy.deepcopy(base_head)
        if channels_last:
            body.to(memory_format=torch.channels_last)
        return body, head, torch.optim.Adam([*body.parameters(), *head.parameters()], lr=1e-3)

    variants = {}

    def add_reference():
        body, head, opt = fresh()
        return lambda: reference_step(body, head, opt, images, labels, alpha, steps)
    variants["reference (l2l style)"] = ("train", add_reference)

    def add_ours(speed, compiled=False):
        def setup():
            body, head, opt = fresh()
            features_fn = feature_extractor(body, speed, compile=compiled)
            return lambda: train_step(body, head, opt, images, labels, alpha, steps, speed=speed,
                                      features_fn=features_fn)
        return setup

    def label(speed):
        strategy = f"chunk({speed.chunk_size})" if speed.strategy == "chunk" else speed.strategy
        loop = {"torch.func": "func", "closed-form": "closed"}[speed.head_loop]
        return (f"ours {strategy}{' batched' if speed.batch_body else ''} {speed.precision}"
                f"{' CL' if speed.channels_last else ' NCHW'} {loop}"
                f"{' compiled' if speed.compile_head else ''}")
    chunk = min(4, cfg["meta_batch"])
    cuda = device.type == "cuda"
    if head_loops_only:
        for speed in head_loop_speeds(device, compile_body):
            variants[label(speed)] = ("train", add_ours(speed))
        return variants
    ours = [Speed("task", channels_last=True), Speed("chunk", chunk, channels_last=True),
            Speed("vmap", channels_last=True), Speed("vmap", batch_body=True, channels_last=True),
            Speed("task", channels_last=False), Speed("vmap", batch_body=True, channels_last=False),
            Speed("task", precision="bfloat16", channels_last=True),
            Speed("vmap", batch_body=True, precision="bfloat16", channels_last=True)]
    if not cuda:  # without AMX or AVX512-BF16, bfloat16 is emulated and slow: time one variant
        ours = [s for s in ours if s.precision == "float32" or not s.batch_body]
    if quick:  # the slowest rows go; the float32 comparison stays
        ours = [s for s in ours if s.precision == "float32" and (s.channels_last or not s.batch_body)]
    ours += [replace(s, head_loop="closed-form") for s in ours if s.precision == "float32"]
    for speed in ours:
        variants[label(speed)] = ("train", add_ours(speed))
    if compile_body:
        for speed in (Speed("chunk", chunk, channels_last=True),
                      Speed("vmap", batch_body=True, channels_last=True)):
            variants[label(speed) + " compiled"] = ("train", add_ours(speed, compiled=True))

    add_supervised_and_eval(variants, cfg, fresh, images, labels, eval_images, eval_labels, cuda)
    return variants


def head_loop_speeds(device, compiled: bool):
    """--head-loops: the default speed and the task-by-task strategy, each with both head loops
    (and, with --compile, the default with its head loop compiled)."""
    default = default_speed(device)
    speeds = [replace(s, head_loop=loop) for s in (default, replace(default, strategy="task"))
              for loop in ("torch.func", "closed-form")]
    return speeds + ([replace(default, compile_head=True)] if compiled else [])


def add_supervised_and_eval(variants, cfg, fresh, images, labels, eval_images, eval_labels, cuda):
    """The supervised lower bound and the 600-task evaluations, added to ``variants``."""
    alpha, steps, eval_tasks = cfg["alpha"], cfg["steps"], cfg["eval_tasks"]

    def add_supervised(per_task, channels_last):
        def setup():
            body, head, _ = fresh(channels_last)
            opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=1e-3)
            return lambda: supervised_step(body, head, opt, images, labels, per_task, channels_last)
        return setup
    for per_task in (True, False):
        for cl in (False, True):
            label = f"supervised {'per task' if per_task else 'one batch'} float32{' CL' if cl else ' NCHW'}"
            variants[label] = ("supervised", add_supervised(per_task, cl))

    def add_reference_eval():
        body, head, _ = fresh()
        def run(eval_tasks=eval_tasks):
            for i in range(eval_tasks):
                j = i % EVAL_TASKS_PER_CALL
                reference_accuracy(body, head, eval_images[j], eval_labels[j], alpha, steps)
        return run
    variants[f"eval {eval_tasks} tasks reference"] = ("eval", add_reference_eval)

    def add_ours_eval(speed):
        def setup():
            body, head, _ = fresh()
            features_fn = feature_extractor(body, speed)
            def run(eval_tasks=eval_tasks):
                for start in range(0, eval_tasks, EVAL_TASKS_PER_CALL):
                    n = min(EVAL_TASKS_PER_CALL, eval_tasks - start)
                    task_accuracies(body, head, eval_images[:n], eval_labels[:n], alpha, steps,
                                    features_fn, speed.head_loop)
            return run
        return setup
    eval_speeds = [Speed(channels_last=True), Speed(channels_last=True, head_loop="closed-form"),
                   Speed(batch_body=True, channels_last=True),
                   Speed(batch_body=True, precision="bfloat16", channels_last=True)]
    for speed in (eval_speeds if cuda else eval_speeds[:2]):
        name = (f"eval {eval_tasks} tasks ours{' batched' if speed.batch_body else ''} "
                f"{speed.precision} CL {'func' if speed.head_loop == 'torch.func' else 'closed'}")
        variants[name] = ("eval", add_ours_eval(speed))


def run_config(cfg, device, repeats, eval_repeats, compile_body, quick, head_loops_only=False):
    variants = build_variants(cfg, device, quick, compile_body, head_loops_only)
    results = {name: {"kind": kind, "times": [], "error": None} for name, (kind, _) in variants.items()}
    steps = {}
    for name, (kind, setup) in variants.items():  # setup + warm-up (compilation, allocator, caches)
        try:
            steps[name] = setup()
            # An evaluation warms up, and has its peak memory measured, on one call's worth of tasks.
            short = (lambda f=steps[name]: f(EVAL_TASKS_PER_CALL)) if kind == "eval" else steps[name]
            results[name]["first_call_s"] = timed(short, device)  # with compilation, if any
            results[name]["peak_bytes"] = peak_memory(short, device)
        except Exception as e:  # noqa: BLE001 - one failing variant must not stop the benchmark
            results[name]["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    for repeat in range(repeats):  # round-robin, so every variant sees the same machine conditions
        for name, step in steps.items():
            if results[name]["error"] or (results[name]["kind"] == "eval" and repeat >= eval_repeats):
                continue
            try:
                results[name]["times"].append(timed(step, device))
            except Exception as e:  # noqa: BLE001
                results[name]["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    for r in results.values():
        r["median_s"] = statistics.median(r["times"]) if r["times"] and not r["error"] else None
    return results


def ratios(results, eval_tasks):
    ref = results["reference (l2l style)"]["median_s"]
    for name, r in results.items():  # torch.func against the closed form of the same row
        twin = results.get(name.replace(" func", " closed").replace(" compiled", ""))
        r["func_vs_closed"] = (r["median_s"] / twin["median_s"] if " func" in name and twin
                               and r["median_s"] and twin["median_s"] else None)
    sup = [r["median_s"] for name, r in results.items()
           if r["kind"] == "supervised" and r["median_s"] is not None]
    best_sup = min(sup) if sup else None
    ref_eval = results.get(f"eval {eval_tasks} tasks reference", {}).get("median_s")
    for name, r in results.items():
        t = r["median_s"]
        r["vs_reference"] = t / ref if t and ref and r["kind"] == "train" else None
        r["vs_supervised"] = t / best_sup if t and best_sup and r["kind"] == "train" else None
        r["vs_reference_eval"] = t / ref_eval if t and ref_eval and r["kind"] == "eval" else None
    return best_sup


def print_table(cfg, results, device):
    print(f"\n== {cfg['name']}, {cfg['steps']} inner steps, device {device} "
          f"(median of {cfg['repeats']} timed repeats, {cfg['eval_repeats']} for evaluations) ==")
    print(f"{'variant':<46} {'median':>10} {'peak MB':>9} {'/ref':>7} {'/sup':>7} {'func/closed':>12}"
          f" {'1st call':>9}")
    for name, r in results.items():
        if r["error"]:
            print(f"{name:<46} ERROR {r['error']}")
            continue
        peak = r.get("peak_bytes")
        rel = r["vs_reference"] or r["vs_reference_eval"]
        sup, fc = r["vs_supervised"], r.get("func_vs_closed")
        peak_mb = f"{peak / 2**20:9.1f}" if peak is not None else f"{'-':>9}"
        print(f"{name:<46} {1000 * r['median_s']:8.1f}ms {peak_mb} "
              f"{f'{rel:.2f}x' if rel else '':>7} {f'{sup:.2f}x' if sup else '':>7} "
              f"{f'{fc:.2f}x' if fc else '':>12} {r.get('first_call_s', 0):8.1f}s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller meta-batches and fewer repeats (< 1 min on CPU)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 5, quick 1)")
    p.add_argument("--eval-repeats", type=int, default=None,
                   help="timed repeats of the 600-task evaluations (default: --repeats)")
    p.add_argument("--compile", action="store_true",
                   help="also time the torch.compile'd body (with --head-loops: the compiled head loop)")
    p.add_argument("--head-loops", action="store_true",
                   help="only the rows the head loop decides: torch.func vs closed form")
    p.add_argument("--configs", default=None, help="comma-separated indices of configurations to run (default all)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None, help="also write all results to this JSON file")
    p.add_argument("--results", type=Path, default=None, metavar="FILE", help="also write them as a "
                   "results file (command, versions, date, device: anil/run/results.py) for docs/")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here; use --device cpu")
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats must be positive, got {args.repeats}")
    device = torch.device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.eval_repeats is not None and args.eval_repeats < 1:
        p.error(f"--eval-repeats must be positive, got {args.eval_repeats}")
    repeats = args.repeats or (1 if args.quick else 5)
    configs = [dict(c) for c in CONFIGS]
    if args.configs:
        try:
            configs = [configs[int(i)] for i in args.configs.split(",")]
        except (ValueError, IndexError):
            p.error(f"--configs: expected indices in 0..{len(CONFIGS) - 1} separated by commas, got {args.configs!r}")
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
                    f"{torch.get_num_threads()} torch threads")
    print(f"torch {torch.__version__}, {machine}{', quick' if args.quick else ''}", flush=True)
    report = {"torch": torch.__version__, "machine": machine, "device": args.device,
              "quick": args.quick, "configs": []}
    for cfg in configs:
        if args.quick and device.type == "cpu":  # an eighth of the meta-batch, 16 evaluation tasks
            cfg["meta_batch"] = max(1, cfg["meta_batch"] // 8)
            cfg["name"] = cfg["name"].split(" B=")[0] + f" B={cfg['meta_batch']} (quick)"
        cfg["eval_tasks"] = 2 * EVAL_TASKS_PER_CALL if args.quick else EVAL_TASKS
        cfg["repeats"] = repeats
        cfg["eval_repeats"] = min(args.eval_repeats or repeats, repeats)
        start = time.perf_counter()
        results = run_config(cfg, device, repeats, cfg["eval_repeats"], args.compile, args.quick,
                             args.head_loops)
        ratios(results, cfg["eval_tasks"])
        print_table(cfg, results, device)
        print(f"({time.perf_counter() - start:.0f}s)", flush=True)
        report["configs"].append({"config": cfg, "results": results})
        if args.json:  # after every configuration, so that a run cut short still leaves results
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1))
    if args.json:
        print(f"wrote {args.json}")
    if args.results:
        print(f"wrote {write_results(args.results, report, device)}")
    return report


if __name__ == "__main__":
    main()
