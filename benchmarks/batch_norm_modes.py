"""What the batch-norm protocol does to test accuracy on the built-in glyphs: one default
``python train.py`` per mode (``--batch-norm task|separate|support``), then every trained model
evaluated under every mode on the run's own 600 test tasks, and how many test-query predictions
of the same weights change between "task" and "support" evaluation.

    python benchmarks/batch_norm_modes.py --out /tmp/bn-modes --results docs/results/batch-norm.json

Each training run is the default command plus ``--batch-norm MODE --threads 1`` (single-threaded
and niced, so that it shares a busy machine politely) and ``--iterations N`` if given (fewer
than the preset's 600 when the machine is too busy for three full runs: the record's command
says which); runs already finished in --out are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anil.algorithm import adapt_head  # noqa: E402
from anil.data import load_split  # noqa: E402
from anil.model import BATCH_NORMS, task_features  # noqa: E402
from anil.run.checkpoint import load_run  # noqa: E402
from anil.run.cli import dataset_path  # noqa: E402
from anil.run.results import write_results  # noqa: E402
from anil.sampler import TaskSampler, split_seed, support_query  # noqa: E402


def train(mode: str, out: Path, iterations: int | None) -> dict:
    """summary.json of the default train.py with ``--batch-norm mode`` (trained if not yet)."""
    folder = out / mode
    if not (folder / "summary.json").is_file():
        command = ["nice", sys.executable, str(ROOT / "train.py"), "--batch-norm", mode,
                   "--threads", "1", "--out", str(folder), "--overwrite"]
        command += [] if iterations is None else ["--iterations", str(iterations)]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads((folder / "summary.json").read_text())


def predictions(body, head, sampler, num_tasks, config, mode) -> torch.Tensor:
    """Predicted labels of every test query [num_tasks, NK] under batch-norm ``mode``."""
    params = {k: v.detach() for k, v in head.named_parameters()}
    predicted = []
    with torch.no_grad():
        for task_id in range(num_tasks):
            task = sampler.task(task_id)
            support_features, query_features = task_features(
                body, *support_query(task.images), mode)
            adapted = adapt_head(head, params, support_features, support_query(task.labels)[0],
                                 config["inner_lr"], config["test_inner_steps"])
            logits = torch.func.functional_call(head, adapted, (query_features,))
            predicted.append(logits.argmax(-1))
    return torch.stack(predicted)


def cross_evaluate(folder: Path) -> dict:
    """Test accuracy of one run's best weights under every mode, and the changed predictions."""
    body, head, config = load_run(folder)
    body.eval(), head.eval()
    split = load_split(dataset_path(argparse.Namespace(**config)), "test")
    sampler = TaskSampler(split, config["ways"], config["shots"],
                          seed=split_seed(config["seed"], "test"), rotate=config["rotate"])
    labels = support_query(sampler.task(0).labels)[1]  # the same label layout in every task
    predicted = {m: predictions(body, head, sampler, config["eval_tasks"], config, m)
                 for m in BATCH_NORMS}
    changed = (predicted["task"] != predicted["support"])
    return {"accuracy_under": {m: float((p == labels).double().mean()) for m, p in predicted.items()},
            "queries": int(changed.numel()),
            "predictions_changed_task_vs_support": int(changed.sum()),
            "tasks_with_a_changed_prediction": int(changed.any(1).sum())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/bn-modes"), help="folder for the runs")
    p.add_argument("--results", type=Path, default=ROOT / "docs/results/batch-norm.json")
    p.add_argument("--iterations", type=int, default=None,
                   help="train.py's --iterations (default: the glyphs preset's)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for mode in BATCH_NORMS:
        summary = train(mode, args.out, args.iterations)
        results[mode] = {"iterations": summary["config"]["iterations"],
                         "test_accuracy": summary["test_accuracy"],
                         "test_ci95": summary["test_ci95"],
                         "untrained_test_accuracy": summary["untrained_test_accuracy"],
                         "test_tasks": summary["config"]["eval_tasks"],
                         **cross_evaluate(args.out / mode)}
        print(mode, json.dumps(results[mode]), flush=True)
    write_results(args.results, {"trained_with": results}, "cpu",
                  " ".join(["python benchmarks/batch_norm_modes.py", *map(shlex.quote, sys.argv[1:])]))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
